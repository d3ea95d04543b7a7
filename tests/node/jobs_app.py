"""The job app the real-process tests run under ``trimaran worker tests.node.jobs_app:app``.

Each task run appends a line to the file named by ``TRIMARAN_TEST_MARKS`` (``start``/``done``,
the job id, its attempt and this worker's pid), so a test sees every execution of every job,
whichever process ran it. ``hold``: attempt k sleeps ``hold_s[k-1]`` (0 past the list): a job to
kill or stop a worker in the middle of. The result names who produced it.
"""

from __future__ import annotations

import os

import trio

from trimaran.client import Jobs, current_job

app = Jobs()


def mark(*words: object) -> None:
    with open(os.environ["TRIMARAN_TEST_MARKS"], "a") as f:
        f.write(" ".join(str(w) for w in words) + "\n")


@app.task("hold", timeout_ms=60_000)
async def hold(n: int, hold_s: list[float]) -> dict[str, int]:
    job = current_job()
    mark("start", job.id, job.attempt, os.getpid())
    if job.attempt <= len(hold_s):
        await trio.sleep(hold_s[job.attempt - 1])
    mark("done", job.id, job.attempt, os.getpid())
    return {"n": n, "pid": os.getpid(), "attempt": job.attempt}


@app.task("load", timeout_ms=60_000)
async def load(n: int) -> dict[str, int]:
    job = current_job()
    mark("done", job.id, job.attempt, os.getpid())
    return {"n": n, "pid": os.getpid(), "attempt": job.attempt}
