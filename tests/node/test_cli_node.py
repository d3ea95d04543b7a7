"""``trimaran node run`` and ``up``: help on every command, one clear error line and a non-zero exit."""

from __future__ import annotations

import dataclasses
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.client.real_cluster import free_ports
from tests.node.helpers import HOST
from trimaran.cli import main
from trimaran.node.data_dir import CLUSTER_ID_FILE, claim_data_dir, mark_auth_required


@pytest.mark.parametrize("args", [["up", "--help"], ["node", "--help"], ["node", "run", "--help"]])
def test_every_node_command_has_help(args: list[str]) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "Usage:" in result.output


def run(args: list[str]) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["node", "run", *args])
    return result.exit_code, result.output


def base_args(tmp_path: Path, listen: str | None = None) -> list[str]:
    ports = free_ports(2)  # picked together: distinct
    return [
        "--id", "1",
        "--listen", listen or f"{HOST}:{ports[0]}",
        "--peer-listen", f"{HOST}:{ports[1]}",
        "--data-dir", str(tmp_path / "n1"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--peer", "1=127.0.0.1:9"], "listed as its own peer"),
        (["--cluster-id", ""], "cluster id"),
        # The connection bounds reach NodeConfig.validate(), relations included.
        (["--client-idle-timeout-ms", "5000"], "client_idle_timeout_ms must be at least request_timeout_ms"),
        (["--client-answer-bytes-max", "1024"], "client_answer_bytes_max must hold one largest answer"),
        (["--client-answer-bytes-node-max", str(17 << 20)], "client_answer_bytes_node_max must be at least"),
    ],
)
def test_bad_configuration_is_one_line_and_exit_1(tmp_path: Path, extra: list[str], message: str) -> None:
    code, output = run(base_args(tmp_path) + extra)
    assert code == 1
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: config_error:") and message in lines[0], output


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--peer", "2=nonsense"], "not HOST:PORT"),
        (["--peer", "x=127.0.0.1:9"], "not ID=HOST:PORT"),
        (["--listen", "nohost"], "--listen 'nohost' is not HOST:PORT"),
        (["--peer-listen", "127.0.0.1:99999"], "port must be in 0..65535"),
        (["--peer-client", "5=127.0.0.1:9"], "no --peer"),
    ],
)
def test_a_malformed_address_is_a_usage_mistake_exit_2(tmp_path: Path, extra: list[str], message: str) -> None:
    code, output = run(base_args(tmp_path) + extra)
    assert code == 2 and output.startswith("Usage:") and "Error: " in output and message in output, output


@pytest.mark.parametrize("endpoints", ["foo", "127.0.0.1:99999", ":", ","])
def test_a_malformed_endpoint_is_a_usage_mistake_exit_2(endpoints: str) -> None:
    for command in (["status"], ["kv", "get", "k"], ["auth", "keys"]):
        result = CliRunner().invoke(main, [*command, "--endpoints", endpoints])
        assert result.exit_code == 2 and "Invalid value for '--endpoints'" in result.output, (command, result.output)


def test_a_taken_client_port_is_one_line_and_exit_1(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind((HOST, 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        code, output = run(base_args(tmp_path, listen=f"{HOST}:{port}"))
    lines = output.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "in use" in lines[0] and f"for clients on {HOST}:{port}" in lines[0], output


def test_the_connection_bound_flags_default_to_nodeconfigs_defaults() -> None:
    from trimaran.cli.node import _CONNECTION_BOUNDS
    from trimaran.node.config import NodeConfig

    defaults = {f.name: f.default for f in dataclasses.fields(NodeConfig)}
    for flag, default, _ in _CONNECTION_BOUNDS:
        assert defaults[flag.lstrip("-").replace("-", "_")] == default, flag


def test_a_data_dir_that_required_tokens_is_refused_without_a_key(tmp_path: Path) -> None:
    """One clear line, before the store is opened; the data dir is left as it was."""
    mark_auth_required(str(tmp_path / "n1"))
    before = sorted(p.name for p in (tmp_path / "n1").iterdir())
    code, output = run(base_args(tmp_path))
    assert code == 1 and "refusing to serve" in output and "--auth-public-key" in output and "--allow-auth-off" in output, output
    assert sorted(p.name for p in (tmp_path / "n1").iterdir()) == sorted(before + [CLUSTER_ID_FILE])


def test_a_data_dir_of_another_cluster_is_refused(tmp_path: Path, gc_tuned: list[None]) -> None:
    """A node pointed at a data dir another cluster wrote refuses to start, before reading it (its
    log would mix with this cluster's history); a new data dir is claimed at the first start."""
    data_dir = tmp_path / "n1"
    claim_data_dir(str(data_dir), "blue")
    claim_data_dir(str(data_dir), "blue")  # the same cluster: fine, again and again
    assert (data_dir / CLUSTER_ID_FILE).read_text() == "blue\n"
    code, output = run(base_args(tmp_path) + ["--cluster-id", "green"])
    assert code == 1 and "belongs to cluster 'blue', not 'green'" in output, output
    assert sorted(p.name for p in data_dir.iterdir()) == [CLUSTER_ID_FILE]  # nothing else was made
    assert len(gc_tuned) == 1  # `node run` tuned the collector before anything else (tests/conftest.py)


def test_a_node_process_tunes_the_cycle_collector_and_freezes_what_exists_at_start() -> None:
    """In a child process (the threshold and the frozen set are process-wide)."""
    code = (
        "import gc; from trimaran.node.node import GC_GEN0_THRESHOLD, tune_gc; "
        "before = gc.get_threshold(); tune_gc(); "
        "assert gc.get_threshold() == (GC_GEN0_THRESHOLD,) + before[1:], gc.get_threshold(); "
        "assert gc.get_freeze_count() > 1000, gc.get_freeze_count(); print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
