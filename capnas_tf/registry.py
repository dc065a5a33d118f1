"""Name → object tables for the parts users choose by flag (encoders, decoders, relaxations, search
strategies): one implementation of "register under a name, look up by name, fail with the choices"."""
from __future__ import annotations


class Registry(dict):
    """A dict of `name → object` with a registering decorator and a lookup that names the choices.

    Args:
      kind: what the entries are, for error messages ("encoder", "decoder", …).
      register_name, lookup_name: the public functions wrapping `register` / `lookup`, named in errors.

    Registering another object under a taken name is an error, so that two modules cannot silently
    shadow each other; registering the same object again is allowed (module re-imports).
    """

    def __init__(self, kind: str, *, register_name: str, lookup_name: str):
        super().__init__()
        self.kind, self.register_name, self.lookup_name = kind, register_name, lookup_name

    def register(self, name: str, obj=None):
        """`register(name, obj)`, or `@register(name)` as a decorator; returns obj."""

        def _register(obj_):
            if name in self and self[name] is not obj_:
                raise ValueError(f"{self.register_name}: the name {name!r} is already taken by {self[name]!r}.")
            self[name] = obj_
            return obj_

        return _register if obj is None else _register(obj)

    def lookup(self, name: str, message: str | None = None):
        """The object registered as `name`; a ValueError with `message` (default: the kind and the
        registered names) otherwise."""
        if name not in self:
            raise ValueError(message or f"{self.lookup_name}: unknown {self.kind} name {name!r}; "
                                        f"expected one of {sorted(self)}.")
        return self[name]

