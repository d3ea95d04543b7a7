"""Cron slots in log time, through croniter.

Log time is integer milliseconds since the Unix epoch, read as UTC. croniter is handed epoch
seconds (a float, exact for whole milliseconds at any date we meet) and converts them with an
explicit UTC zone, so no replica's local timezone or clock is ever read. Cron has minute resolution,
so the slots it returns are whole seconds and convert back to milliseconds exactly.

Only plain five-field expressions are accepted: croniter's ``R`` (a draw from the global
``random``, which would differ between replicas) and ``H`` (needs a hash id) are refused, and so
is an expression that never matches (croniter gives up after 50 years).
"""

from __future__ import annotations

import re

from croniter import CroniterError, croniter

from trimaran.errors import InvalidArgument

#: Standard five-field cron (minute hour day-of-month month day-of-week); no seconds field.
CRON_FIELDS = 5
#: What a field may hold: numbers, month and day names, and * / , - # ? L W.
FIELD = re.compile(r"[0-9A-Za-z*/,#?-]+")
#: croniter's random (R) and hashed (H) values, as a whole token (not the r of "mar" or h of "thu").
RANDOM_OR_HASHED = re.compile(r"(?<![A-Za-z])[RrHh](?![A-Za-z])")
#: Far beyond any log time: the "next slot" of a schedule croniter can no longer place.
NEVER_MS = 1 << 52


def check(expr: str) -> None:
    """Refuse (``InvalidArgument``) an expression that is not a deterministic, matching five-field cron."""
    fields = expr.split()
    ok = (
        len(fields) == CRON_FIELDS
        and all(FIELD.fullmatch(f) for f in fields)
        and not RANDOM_OR_HASHED.search(expr)
        and croniter.is_valid(expr)
    )
    if ok:
        try:
            croniter(expr, 0.0).get_next(float)
        except (CroniterError, ValueError, TypeError, OverflowError):
            ok = False
    if not ok:
        raise InvalidArgument(f"cron {expr!r} is not a valid five-field cron expression that ever matches")


def next_slot_ms(expr: str, after_ms: int) -> int:
    """The first slot of ``expr`` strictly after ``after_ms`` (``NEVER_MS`` if croniter finds none)."""
    try:
        seconds = croniter(expr, after_ms / 1000).get_next(float)
    except (CroniterError, ValueError, TypeError, OverflowError):
        return NEVER_MS
    return round(seconds * 1000)


def last_slot_ms(expr: str, at_or_before_ms: int) -> int:
    """The latest slot of ``expr`` at or before ``at_or_before_ms`` (-1 if croniter finds none)."""
    try:
        seconds = croniter(expr, (at_or_before_ms + 1) / 1000).get_prev(float)
    except (CroniterError, ValueError, TypeError, OverflowError):
        return -1
    return round(seconds * 1000)
