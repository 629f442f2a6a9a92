import pytest

from torchslim.errors import UserError
from torchslim.registry import Registry


def test_register_get_and_decorator() -> None:
    reg: Registry[object] = Registry("widget")
    reg.register("a", 1)

    @reg.register("b")
    def b() -> int:
        return 2

    assert reg.get("a") == 1 and reg.get("b") is b
    assert reg.names() == ["a", "b"] and "a" in reg


def test_unknown_name_suggests_close_matches() -> None:
    reg: Registry[int] = Registry("criterion")
    reg.register("magnitude", 1)
    with pytest.raises(UserError, match="unknown criterion 'magnitud'; did you mean 'magnitude'"):
        reg.get("magnitud")


def test_duplicate_registration_needs_replace() -> None:
    reg: Registry[int] = Registry("x")
    reg.register("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", 2)
    reg.register("a", 2, replace=True)
    assert reg.get("a") == 2
