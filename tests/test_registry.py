"""The name → object tables behind --encoder, --decoder, --relaxation and --search_strategy."""
import pytest

from capnas_tf.registry import Registry


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
