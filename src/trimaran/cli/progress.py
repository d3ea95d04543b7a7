"""The one progress bar the CLI draws on stderr (snapshot save, member add --voter)."""

from __future__ import annotations

import sys
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
