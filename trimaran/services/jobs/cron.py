"""Cron slots in log time, through croniter.

Log time is integer milliseconds since the Unix epoch, read as UTC. croniter is handed epoch
seconds (a float, exact for whole milliseconds at any date we meet) and converts them with an
explicit UTC zone, so no replica's local timezone or clock is ever read. Cron has minute resolution,
so the slots it returns are whole seconds and convert back to milliseconds exactly.
"""

from __future__ import annotations

from croniter import croniter

from trimaran.errors import InvalidArgument

#: Standard five-field cron (minute hour day-of-month month day-of-week); no seconds field.
CRON_FIELDS = 5


def check(expr: str) -> None:
    """Refuse (``InvalidArgument``) an expression croniter cannot parse or that is not five fields."""
    if len(expr.split()) != CRON_FIELDS or not croniter.is_valid(expr):
        raise InvalidArgument(f"cron {expr!r} is not a valid five-field cron expression")


def next_slot_ms(expr: str, after_ms: int) -> int:
    """The first slot of ``expr`` strictly after ``after_ms``."""
    seconds = croniter(expr, after_ms / 1000).get_next(float)
    return round(seconds * 1000)


def last_slot_ms(expr: str, at_or_before_ms: int) -> int:
    """The latest slot of ``expr`` at or before ``at_or_before_ms``."""
    seconds = croniter(expr, (at_or_before_ms + 1) / 1000).get_prev(float)
    return round(seconds * 1000)
