"""The members directory: addresses through the log, checked for shape, bounded, in snapshots."""

from __future__ import annotations

import pytest

from trimaran import limits
from trimaran.errors import InvalidArgument, TooLarge
from trimaran.protocols.service import ApplyContext
from trimaran.services.members import MembersService

CTX = ApplyContext(1, 1000)


def test_set_forget_list_and_generation() -> None:
    svc = MembersService()
    assert svc.apply(["set", 4, "10.0.0.4:7101", "10.0.0.4:7001"], CTX) is True
    assert svc.apply(["set", 4, "10.0.0.4:7101", "10.0.0.4:7001"], CTX) is False  # no change
    assert svc.generation == 1
    assert svc.apply(["set", 5, "[::1]:7105", None], CTX) is True
    assert svc.query(["list"], CTX) == [[4, "10.0.0.4:7101", "10.0.0.4:7001"], [5, "[::1]:7105", None]]
    assert svc.apply(["forget", 4], CTX) is True and svc.apply(["forget", 4], CTX) is False
    assert svc.generation == 3
    other = MembersService()
    other.restore(svc.snapshot())
    assert other.snapshot() == svc.snapshot() and other.entries == {5: ("[::1]:7105", None)}


@pytest.mark.parametrize(
    "command",
    [
        ["set", 0, "h:1", None],
        ["set", "4", "h:1", None],
        ["set", 4, "h", None],
        ["set", 4, "h:0", None],
        ["set", 4, "h:99999", None],
        ["set", 4, "h :1", None],
        ["set", 4, "h:1", 7],
        ["set", 4, "h" * 300 + ":1", None],
        ["forget"],
        ["nope", 1],
        "set",
    ],
)
def test_bad_commands_change_nothing(command: object) -> None:
    svc = MembersService()
    with pytest.raises(InvalidArgument):
        svc.apply(command, CTX)
    assert svc.entries == {} and svc.generation == 0


def test_at_most_members_max_entries() -> None:
    svc = MembersService()
    for n in range(1, limits.members_max + 1):
        svc.apply(["set", n, f"h:{n}", None], CTX)
    with pytest.raises(TooLarge):
        svc.apply(["set", 99, "h:1", None], CTX)
    assert svc.apply(["set", 1, "h:2", None], CTX) is True  # changing one recorded still works
