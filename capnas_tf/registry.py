"""Name → object tables for every part users choose by name (operations, relaxations, Stage II losses,
hypergradient estimators, datasets, scheduled-sampling schedules, encoders, decoders, search and
distribution strategies): one implementation of "register under a name, look up by name, fail with
the choices", and one place to reach the table of any kind (`registry(kind)`), so that a command line
can list and check the choices of a kind, including names registered by user code.
"""
from __future__ import annotations

import importlib


class Registry(dict):
    """A dict of `name → object` with a registering decorator and a lookup that names the choices.

    Args:
      kind: what the entries are, for error messages ("encoder", "decoder", …).
      register_name, lookup_name: the public functions wrapping `register` / `lookup`, named in errors.
      entries: the built-in `{name: object}` entries, registered in their order.

    Registering another object under a taken name is an error, so that two modules cannot silently
    shadow each other; registering the same object again is allowed (module re-imports).
    """

    def __init__(self, kind: str, *, register_name: str, lookup_name: str, entries: dict | None = None):
        super().__init__()
        self.kind, self.register_name, self.lookup_name = kind, register_name, lookup_name
        for name, obj in (entries or {}).items():
            self.register(name, obj)

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


# kind → (module, attribute) of its registry. The modules are imported when a kind is first asked for:
# this module sits below all of them, and importing a module registers its built-in entries (the
# search strategies' module imports the baselines, the decoders' package its decoders).
KINDS: dict[str, tuple[str, str]] = {
    "op": ("capnas_tf.search_space.ops", "OPS"),
    "relaxation": ("capnas_tf.search_space.relaxations", "RELAXATIONS"),
    "stage2_loss": ("capnas_tf.search.captioning", "STAGE2_LOSSES"),
    "hypergradient": ("capnas_tf.search.hypergradient", "HYPERGRADIENTS"),
    "dataset": ("capnas_tf.data.pipeline", "DATASET_SOURCES"),
    "sampling_schedule": ("capnas_tf.decoders.scheduled_sampling", "SCHEDULES"),
    "encoder": ("capnas_tf.encoders", "ENCODERS"),
    "decoder": ("capnas_tf.decoders.registry", "DECODERS"),
    "search_strategy": ("capnas_tf.search.strategies", "STRATEGIES"),
    "distribution": ("capnas_tf.distribute", "DISTRIBUTION_STRATEGIES"),
}


def registry(kind: str) -> Registry:
    """The registry of `kind` (a key of `KINDS`), with its built-in entries registered.

    Example:

        sorted(registry("search_strategy"))         # ['darts', 'gdas', 'random_ws', 'reinforce', 'three_stage']
        registry("dataset").lookup("capnas_shapes")  # or a ValueError that lists the datasets
    """
    if kind not in KINDS:
        raise ValueError(f"registry: unknown kind {kind!r}; expected one of {sorted(KINDS)}.")
    module, attribute = KINDS[kind]
    return getattr(importlib.import_module(module), attribute)
