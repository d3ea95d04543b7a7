"""``trimaran jobs ...`` (with ``--json``) and ``trimaran worker`` as a real subprocess, against an
in-process cluster: the worker runs a small app module written to tmp_path, completes a job
enqueued through the CLI, and exits 0 on SIGTERM with a job still running (given back)."""

from __future__ import annotations

import json
import re
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import trio
from click.testing import CliRunner

from tests.node.helpers import in_process_cluster
from trimaran import limits
from trimaran.cli import main
from trimaran.client import Client

TIMEOUT_S = 30
ROOT = Path(__file__).resolve().parents[2]


async def cli(*args: str) -> tuple[int, str]:
    code, out, err = await cli_streams(*args)
    return code, out + err


async def cli_streams(*args: str) -> tuple[int, str, str]:
    def run() -> tuple[int, str, str]:
        result = CliRunner().invoke(main, list(args))
        return result.exit_code, result.stdout, result.stderr

    return await trio.to_thread.run_sync(run)


ENQUEUE_APP = """
import trimaran

app = trimaran.Jobs()

@app.task("mail", max_attempts=5, timeout_ms=30_000, priority=2, group="tenant")
def send(to: str) -> None:
    pass
"""


async def test_enqueue_takes_the_task_options_only_with_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "s7_enqueue_app.py").write_text(ENQUEUE_APP)
    monkeypatch.syspath_prepend(str(tmp_path))
    async with in_process_cluster(tmp_path / "cluster", 1) as cluster:
        with trio.fail_after(TIMEOUT_S):
            await cluster.leader(timeout_s=TIMEOUT_S)
            e = ["--endpoints", str(cluster.client_address(1))]

            async def enqueued(*flags: str) -> dict:
                code, out = await cli("jobs", "enqueue", "mail", '{"to": "a@b.c"}', *flags, *e)
                assert code == 0, out
                code, out = await cli("jobs", "show", out.strip(), "--json", *e)
                assert code == 0, out
                return json.loads(out)

            bare = await enqueued()  # nothing sent: the cluster's defaults
            assert (bare["max_attempts"], bare["priority"]) == (limits.job_attempts_default, 0)
            from_app = await enqueued("--app", "s7_enqueue_app:app")
            assert (from_app["max_attempts"], from_app["priority"], from_app["group"]) == (5, 2, "tenant")
            flag_wins = await enqueued("--app", "s7_enqueue_app:app", "--max-attempts", "3", "--priority", "1")
            assert (flag_wins["max_attempts"], flag_wins["priority"], flag_wins["group"]) == (3, 1, "tenant")
            async with Client(e[1:], timeout_ms=10_000) as c:  # the task's timeout is the job's lease
                session = await c.jobs.open_session("t", 10_000)
                lease = (await c.jobs.claim(session.session, ["mail"], 1)).jobs[0]
                info = await c.jobs.job(lease.id)
                assert lease.id == from_app["id"] and info is not None and info.lease_until_ms - info.started_at_ms == 30_000
            code, out = await cli("jobs", "enqueue", "sms", "--app", "s7_enqueue_app:app", *e)
            assert code == 2 and "no task for queue sms (its queues: mail)" in out, out


async def test_jobs_commands(tmp_path: Path) -> None:
    async with in_process_cluster(tmp_path, 1) as cluster:
        with trio.fail_after(TIMEOUT_S):
            await cluster.leader(timeout_s=TIMEOUT_S)
            e = ["--endpoints", str(cluster.client_address(1))]
            # Nothing to list is said on stderr (stdout stays empty for scripts), in text mode only.
            assert await cli_streams("jobs", "queues", *e) == (0, "", "no queues (a queue exists once a job is enqueued to it)\n")
            assert await cli_streams("jobs", "queues", "--json", *e) == (0, "", "")
            assert await cli_streams("jobs", "list", "mail", *e) == (0, "", "no jobs in mail\n")
            assert await cli_streams("jobs", "list", "mail", "--state", "dead", *e) == (0, "", "no dead jobs in mail\n")
            assert await cli_streams("jobs", "dlq", "mail", *e) == (0, "", "no dead jobs in mail\n")
            assert await cli_streams("jobs", "schedules", *e) == (0, "", "no schedules\n")
            code, out = await cli("jobs", "enqueue", "mail", '{"to": "a@b.c"}', "--priority", "3", "--json", *e)
            assert code == 0, out
            job_id = json.loads(out)["id"]
            code, out = await cli("jobs", "enqueue", "mail", "--delay-ms", "60000", *e)
            assert code == 0, out
            delayed_id = out.strip()
            code, out = await cli("jobs", "show", job_id, "--json", *e)
            shown = json.loads(out)
            assert code == 0 and shown["state"] == "ready" and shown["payload"] == {"to": "a@b.c"} and shown["priority"] == 3
            code, out = await cli("jobs", "show", job_id, *e)
            assert code == 0 and 'payload           {"to": "a@b.c"}' in out.splitlines(), out
            code, out = await cli("jobs", "stats", "mail", *e)
            assert code == 0 and "paused                False" in out.splitlines(), out
            code, out = await cli("jobs", "show", "1-999", *e)
            assert code == 1 and "not found" in out
            code, out = await cli("jobs", "list", "mail", "--json", *e)
            assert code == 0 and [json.loads(line)["id"] for line in out.splitlines()] == [job_id, delayed_id]
            code, out = await cli("jobs", "list", "mail", "--state", "delayed", *e)
            assert code == 0 and out.split("\t")[0] == delayed_id
            code, out = await cli("jobs", "stats", "mail", "--json", *e)
            stats = json.loads(out)
            assert code == 0 and stats["ready"] == 1 and stats["delayed"] == 1 and stats["paused"] is False
            code, out = await cli("jobs", "queues", *e)
            assert code == 0 and out.splitlines()[1].split() == ["mail", "1", "1", "0", "0", "2"], out
            code, out = await cli("jobs", "queues", "--json", *e)
            (listed,) = [json.loads(line) for line in out.splitlines()]
            assert code == 0 and (listed["queue"], listed["lease_expiries_total"], listed["paused"]) == ("mail", 0, False)
            code, out = await cli("jobs", "pause", "mail", "--json", *e)
            assert code == 0 and json.loads(out)["changed"] is True
            code, out = await cli("jobs", "resume", "mail", *e)
            assert code == 0 and out.strip() == "resumed"
            code, out = await cli("jobs", "cancel", delayed_id, "--json", *e)
            assert code == 0 and json.loads(out) == {"id": delayed_id, "state": "cancelled"}
            code, out = await cli("jobs", "enqueue", "mail", "{not json", *e)
            assert code == 2 and "not JSON" in out

            # A dead job: claimed and failed without retry through the client, then listed and retried.
            async with Client(e[1:], timeout_ms=10_000) as c:
                session = await c.jobs.open_session("t", 10_000)
                lease = (await c.jobs.claim(session.session, ["mail"], 1)).jobs[0]
                assert lease.id == job_id
                assert await c.jobs.fail(job_id, lease.token, "KeyError: 'to'", retry=False) == "dead"
            code, out = await cli("jobs", "dlq", "mail", "--json", *e)
            assert code == 0 and json.loads(out)["error"] == "KeyError: 'to'"
            code, out = await cli("jobs", "retry", job_id, "--json", *e)
            assert code == 0 and json.loads(out) == {"requeued": [job_id]}
            code, out = await cli("jobs", "dlq", "mail", "--purge", *e)
            assert code == 0 and out.strip() == "purged 0"
            assert await cli_streams("jobs", "dlq", "mail", "--requeue", *e) == (0, "", "no dead jobs in mail\n")
            assert await cli_streams("jobs", "dlq", "mail", "--requeue", "--json", *e) == (0, '{"requeued": []}\n', "")

            code, out = await cli("jobs", "schedule", "nightly", "mail", "{}", "--cron", "0 3 * * *", "--json", *e)
            assert code == 0 and json.loads(out)["next_ms"] > 0
            code, out = await cli("jobs", "schedules", "--json", *e)
            assert code == 0 and json.loads(out)["cron"] == "0 3 * * *"
            code, out = await cli("jobs", "schedules", *e)
            assert code == 0 and re.search(r"^nightly\tmail\t0 3 \* \* \*\t\d{4}-\d\d-\d\dT03:00:00Z\t0$", out.strip()), out
            code, out = await cli("jobs", "schedule", "nightly", "mail", "{}", "--cron", "0 3 * * *", *e)
            assert code == 0 and re.fullmatch(r"next: \d{4}-\d\d-\d\dT03:00:00Z \(\d+\)", out.strip()), out
            code, out = await cli("jobs", "unschedule", "nightly", *e)
            assert code == 0 and out.strip() == "removed"
            code, out = await cli("jobs", "schedule", "x", "mail", *e)
            assert code == 2 and "--cron" in out


APP = '''
import trio
import trimaran

app = trimaran.Jobs()

@app.task("work", timeout_ms=30_000)
async def work(n: int) -> dict:
    if n < 0:
        await trio.sleep(60)  # still running at SIGTERM
    return {"double": 2 * n}

@app.task("sync")
def sync_work(text: str) -> str:
    return text[::-1]
'''


async def test_the_worker_command_runs_jobs_and_stops_on_sigterm(tmp_path: Path) -> None:
    (tmp_path / "myapp.py").write_text(textwrap.dedent(APP))
    async with in_process_cluster(tmp_path / "cluster", 1) as cluster:
        with trio.fail_after(TIMEOUT_S):
            await cluster.leader(timeout_s=TIMEOUT_S)
            endpoint = str(cluster.client_address(1))
            env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
            argv = [sys.executable, "-m", "trimaran", "worker", "myapp:app", "--endpoints", endpoint, "--concurrency", "2"]
            argv += ["--queues", "work,sync", "--grace-ms", "200", "--session-ttl-ms", "3000"]
            proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                async with Client([endpoint], timeout_ms=10_000) as c:
                    done = await c.jobs.enqueue("work", {"n": 21})
                    reversed_ = await c.jobs.enqueue("sync", {"text": "abc"})
                    outcome = await c.jobs.result(done, wait_ms=15_000)
                    assert outcome is not None and outcome.value == {"double": 42}, (outcome, proc.poll())
                    outcome = await c.jobs.result(reversed_, wait_ms=5_000)
                    assert outcome is not None and outcome.value == "cba"
                    stuck = await c.jobs.enqueue("work", {"n": -1})
                    while (info := await c.jobs.job(stuck)) is not None and info.state != "running":
                        await trio.sleep(0.05)
                    proc.send_signal(signal.SIGTERM)
                    while proc.poll() is None:
                        await trio.sleep(0.05)
                    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else b""
                    info = await c.jobs.job(stuck)
                    assert info is not None and info.state == "ready" and info.attempt == 0  # given back unrun
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait(5)
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()


def test_the_worker_takes_a_ca_file_as_every_client_command_does(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--ca-file`` is the flag form of TRIMARAN_CA_FILE, which the worker's client reads."""
    ca = tmp_path / "ca.pem"
    ca.write_text("not read before the app loads")
    monkeypatch.setenv("TRIMARAN_CA_FILE", "")  # (restored after the test: the flag sets it for the process)
    result = CliRunner().invoke(main, ["worker", "no_such_module_here:app", "--ca-file", str(ca)])
    assert result.exit_code != 0 and "no such option" not in result.output.lower()
    assert os.environ.get("TRIMARAN_CA_FILE") == str(ca)
    missing = CliRunner().invoke(main, ["worker", "x:app", "--ca-file", str(tmp_path / "absent.pem")])
    assert missing.exit_code == 2 and "does not exist" in missing.output
