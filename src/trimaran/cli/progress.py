"""The one progress bar the CLI draws on stderr (snapshot save, member add --voter)."""

from __future__ import annotations

import sys
import time
from typing import Callable

import click

BAR_WIDTH = 30


class ProgressBar:
    """Call it with ``(done, total)``; it redraws one stderr line as ``label [###...] counts``.
    ``counts(done, total)`` writes the numbers after the bar. Call :meth:`end` once finished (or
    failed): it ends the line if one was drawn."""

    def __init__(self, label: str, counts: Callable[[int, int], str]) -> None:
        self._label = label
        self._counts = counts
        self.drawn = False
        # Redrawn in place on a terminal; into a file or a pipe, only the last state, once, at the
        # end (a log would otherwise hold every redraw on one line).
        self._tty = sys.stderr.isatty()
        self._last = ""

    def __call__(self, done: int, total: int) -> None:
        filled = min(BAR_WIDTH, BAR_WIDTH * done // total) if total else BAR_WIDTH
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        self._last = f"{self._label}[{bar}] {self._counts(done, total)}"
        if self._tty:
            click.echo("\r" + self._last, err=True, nl=False)
        self.drawn = True

    def end(self) -> None:
        if self.drawn:
            click.echo("" if self._tty else self._last, err=True)


_BYTE_UNITS = ("KiB", "MiB", "GiB", "TiB")


def byte_size(size_bytes: float) -> str:
    """``size_bytes`` in the unit that fits: "512 B", "12.3 KiB", "4.0 MiB" (a small cluster's
    snapshot is a few KiB: in MB it read "0.0")."""
    if size_bytes < 1024:
        return f"{size_bytes:.0f} B"
    for unit in _BYTE_UNITS:
        size_bytes /= 1024
        if size_bytes < 1024 or unit == _BYTE_UNITS[-1]:
            break
    return f"{size_bytes:.1f} {unit}"


def transfer_bar(clock: Callable[[], float] = time.monotonic) -> ProgressBar:
    """A bar of bytes received: "done/total" and the rate so far, each in the unit that fits."""
    started = clock()

    def counts(done: int, total: int) -> str:
        rate_bytes_s = done / max(clock() - started, 1e-6)
        return f"{byte_size(done)}/{byte_size(total)} {byte_size(rate_bytes_s)}/s"

    return ProgressBar("", counts)
