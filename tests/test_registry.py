"""The name → object tables of every part chosen by name (`capnas_tf.registry`)."""
import pytest

from capnas_tf.registry import KINDS, Registry, registry


def make():
    return Registry("widget", register_name="register_widget", lookup_name="get_widget")


def test_register_as_call_and_as_decorator_and_look_up():
    widgets = make()

    @widgets.register("b")
    def b():
        return "b"

    assert widgets.register("a", len) is len
    assert widgets.lookup("a") is len and widgets.lookup("b") is b and sorted(widgets) == ["a", "b"]
    assert widgets.register("a", len) is len  # the same object again: a re-import, allowed


def test_a_taken_name_cannot_be_shadowed_by_another_object():
    widgets = make()
    widgets.register("a", len)
    with pytest.raises(ValueError, match="register_widget: the name 'a' is already taken"):
        widgets.register("a", abs)
    assert widgets.lookup("a") is len


def test_unknown_names_get_the_choices_or_the_callers_message():
    widgets = make()
    widgets.register("b", len)
    widgets.register("a", abs)
    with pytest.raises(ValueError, match=r"get_widget: unknown widget name 'c'; expected one of \['a', 'b'\]"):
        widgets.lookup("c")
    with pytest.raises(ValueError, match="--widget must be a or b"):
        widgets.lookup("c", "--widget must be a or b")


# One example entry per kind, to register (and remove again) under a new name.
def _entry():
    return lambda *args, **kwargs: None


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_kind_lists_its_names_and_refuses_a_taken_one(kind):
    table = registry(kind)
    assert isinstance(table, Registry) and table is registry(kind)
    names = sorted(table)
    assert names, f"{kind}: no built-in entries"
    taken = names[0]
    with pytest.raises(ValueError, match=f"the name {taken!r} is already taken"):
        table.register(taken, _entry())
    assert table.register(taken, table[taken]) is table[taken]  # the same object again: allowed
    with pytest.raises(ValueError, match=f"unknown .*'no_such_{kind}'.*{names[0]!r}"):
        table.lookup(f"no_such_{kind}")
    entry = table.register(f"mine_{kind}", _entry())
    try:
        assert table.lookup(f"mine_{kind}") is entry and f"mine_{kind}" in sorted(table)
    finally:
        del table[f"mine_{kind}"]
    assert sorted(table) == names


def test_the_built_in_names_of_the_kinds():
    assert {"three_stage", "darts", "gdas", "random_ws", "reinforce"} <= set(registry("search_strategy"))
    assert {"exact", "finite_difference"} <= set(registry("hypergradient"))
    assert {"capnas_shapes", "coco", "karpathy", "coco_captions_tfds"} <= set(registry("dataset"))
    assert {"soft", "straight_through"} <= set(registry("stage2_loss"))
    assert {"linear", "exponential", "inverse_sigmoid"} <= set(registry("sampling_schedule"))
    assert {"default", "mirrored", "multi_worker", "tpu"} <= set(registry("distribution"))


def test_an_unknown_kind_names_the_kinds():
    with pytest.raises(ValueError, match=r"unknown kind 'strategy'; expected one of \[.*'search_strategy'"):
        registry("strategy")


def test_the_public_register_functions_refuse_a_taken_name():
    from capnas_tf.data.pipeline import DATASET_SOURCES, get_dataset_source, register_dataset
    from capnas_tf.search.captioning import register_stage2_loss
    from capnas_tf.search.hypergradient import get_hypergradient, register_hypergradient

    with pytest.raises(ValueError, match="register_dataset: the name 'coco' is already taken"):
        register_dataset("coco", _entry())  # it used to replace the COCO reader silently
    with pytest.raises(ValueError, match="register_stage2_loss: the name 'soft' is already taken"):
        register_stage2_loss("soft", _entry())
    with pytest.raises(ValueError, match="register_hypergradient: the name 'exact' is already taken"):
        register_hypergradient("exact", _entry())
    with pytest.raises(ValueError, match=r"--hypergradient must be one of \['exact', 'finite_difference'"):
        get_hypergradient("implicit")
    with pytest.raises(ValueError, match=r"unknown dataset name 'flickr8k'; expected one of \['capnas_shapes'"):
        get_dataset_source("flickr8k")
    source = register_dataset("mine")(_entry())  # as a decorator
    try:
        assert get_dataset_source("mine") is source
    finally:
        del DATASET_SOURCES["mine"]
