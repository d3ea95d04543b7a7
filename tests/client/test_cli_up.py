"""`make run` as a script runs it: in the background, stopped with `kill PID` (SIGTERM) of the pid
its banner shows, `trimaran up`'s own. Its nodes stop, and it exits 0 as on Ctrl-C."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
import trio

from tests.ports import free_base, port_free, worker_bases

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
START_WAIT_S = 60.0
STOP_WAIT_S = 30.0
#: Ports of this test: clients BASE+1.., peers BASE+101.., RESP BASE+501.., HTTP BASE+1001.. (`up`
#: has no flag to move it alone): all in 30001-31702, away from test_up's bases and below Linux's
#: ephemeral range (32768-60999 by default), where an outgoing connection could take a port
#: between the check that it is free and `up` binding it.
BASE_PORTS = range(30_000, 30_700)
_BASES = worker_bases(BASE_PORTS, nodes_max=3)
RESP_OFFSET = 500
OFFSETS = tuple(step + i for step in (0, 100, RESP_OFFSET, 1000) for i in (1, 2, 3))


def _children_of(up_pid: int) -> list[int]:
    """The live `node run` processes `trimaran up` started (each is given --parent-pid UP_PID)."""
    mark = f"--parent-pid\0{up_pid}\0".encode()
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and mark in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:  # gone meanwhile
            continue
    return found


def _free_base() -> int:
    return free_base(_BASES, OFFSETS)


async def test_make_run_stops_cleanly_on_sigterm_to_the_pid_its_banner_shows(tmp_path: Path) -> None:
    base = _free_base()
    up_args = f"--base-port {base} --resp-base-port {base + RESP_OFFSET} --data-dir {tmp_path / 'data'}"
    out_path = tmp_path / "make-run.out"
    with open(out_path, "wb") as out:
        # -o: never (re)install .venv from a test; the one running the tests is used as it is.
        argv = ["make", "--no-print-directory", "-C", str(ROOT), "-o", ".venv/.installed-run", "run", f"UP_ARGS={up_args}"]
        make = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    try:
        with trio.fail_after(START_WAIT_S):
            while "stops the cluster" not in out_path.read_text():
                assert make.poll() is None, out_path.read_text()
                await trio.sleep(0.1)
        found = re.search(r"Ctrl-C or `kill (\d+)` stops the cluster", out_path.read_text())
        assert found is not None, out_path.read_text()
        up_pid = int(found.group(1))
        assert up_pid != make.pid and len(_children_of(up_pid)) == 3
        os.kill(up_pid, signal.SIGTERM)
        with trio.fail_after(STOP_WAIT_S):
            while make.poll() is None:
                await trio.sleep(0.1)
        output = out_path.read_text()
        assert make.returncode == 0 and output.rstrip().endswith("trimaran: stopped"), output
        # Every node process is gone with it, and each of their ports can be bound again.
        assert _children_of(up_pid) == [] and all(port_free(base + offset) for offset in OFFSETS)
    finally:
        if make.poll() is None:
            make.send_signal(signal.SIGTERM)  # make hands it on to `trimaran up`
            make.wait(timeout=STOP_WAIT_S)
