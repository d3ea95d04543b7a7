"""Majority arithmetic over a set of voters (§5.2 elections, §5.3 commitment)."""

from __future__ import annotations

from enum import Enum
from typing import Mapping, Sequence


class VoteResult(Enum):
    PENDING = 0
    WON = 1
    LOST = 2


def majority(voter_count: int) -> int:
    return voter_count // 2 + 1


def committed_index(voters: Sequence[int], match_index: Mapping[int, int]) -> int:
    """The largest index that a majority of voters has (0 when there are no voters)."""
    if not voters:
        return 0
    matches = sorted((match_index.get(v, 0) for v in voters), reverse=True)
    return matches[majority(len(voters)) - 1]


def vote_result(voters: Sequence[int], votes: Mapping[int, bool]) -> VoteResult:
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    need = majority(len(voters))
    if granted >= need:
        return VoteResult.WON
    if len(voters) - rejected < need:
        return VoteResult.LOST
    return VoteResult.PENDING


def has_quorum(voters: Sequence[int], active: Mapping[int, bool]) -> bool:
    return sum(1 for v in voters if active.get(v)) >= majority(len(voters))
