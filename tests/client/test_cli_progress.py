"""The CLI's progress bar: redrawn in place on a terminal, one final line into a file or a pipe."""

from __future__ import annotations

import sys

import pytest

from trimaran.cli.members import SILENT_NODE_HINT_S, catch_up_counts
from trimaran.cli.progress import ProgressBar, byte_size, transfer_bar


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


def test_sizes_are_shown_in_the_unit_that_fits() -> None:
    assert [byte_size(n) for n in (0, 1023, 1024, 1536, 3 * 1024 * 1024, 5 * 1024**3)] == [
        "0 B", "1023 B", "1.0 KiB", "1.5 KiB", "3.0 MiB", "5.0 GiB",
    ]  # fmt: skip


def test_a_small_snapshot_transfer_reads_in_kib_not_zero_mb(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    now = [100.0]
    bar = transfer_bar(clock=lambda: now[0])
    now[0] += 2.0
    bar(6_144, 12_288)
    bar.end()
    assert capsys.readouterr().err == "[" + "#" * 15 + "." * 15 + "] 6.0 KiB/12.0 KiB 3.0 KiB/s\n"


def test_the_catch_up_bar_asks_whether_a_node_that_got_nothing_runs() -> None:
    now = [0.0]
    counts = catch_up_counts(4, "127.0.0.1:7104", clock=lambda: now[0])
    assert counts(0, 300) == "0/300"  # just started: no verdict yet
    now[0] += SILENT_NODE_HINT_S
    assert counts(0, 300) == "0/300 (node 4 acknowledged nothing yet: installing a snapshot, or not running at 127.0.0.1:7104?)"
    assert counts(120, 300) == "120/300"  # it is catching up: nothing to ask
