"""The CLI's progress bar: redrawn in place on a terminal, one final line into a file or a pipe."""

from __future__ import annotations

import sys

import pytest

from trimaran.cli.progress import ProgressBar


def _draw(monkeypatch: pytest.MonkeyPatch, tty: bool) -> ProgressBar:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: tty)
    bar = ProgressBar("saving ", lambda done, total: f"{done}/{total}")
    for done in (0, 5, 10):
        bar(done, 10)
    return bar


def test_into_a_pipe_only_the_last_state_is_written_once(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bar = _draw(monkeypatch, tty=False)
    assert capsys.readouterr().err == ""
    bar.end()
    assert capsys.readouterr().err == "saving [" + "#" * 30 + "] 10/10\n"


def test_on_a_terminal_each_call_redraws_the_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    bar = _draw(monkeypatch, tty=True)
    bar.end()
    err = capsys.readouterr().err
    assert err.count("\r") == 3 and err.endswith("] 10/10\n") and "[" + "#" * 15 + "." * 15 + "] 5/10" in err
