"""A deliberately naive model of the job service, for the property tests.

Plain dicts and lists, full scans everywhere, no indexes, no incremental bookkeeping: slow but
plainly right, so when it and :class:`~trimaran.services.jobs.JobsService` disagree the service is
the suspect. It takes commands already known to be well-formed and returns ``("ok", result)`` or
``("err", error class)``. What it leaves out: catch-up and cron schedules, the payload byte bound of
a claim and the count bounds (sessions, queues), which the unit tests cover.

Time: :meth:`ModelJobs.advance` runs, before each entry's commands, every event due by the entry's
log time, earliest first (ties: run, lease, session, expiry, unique window, purge, schedule; then
id), re-scanning everything after each one.
"""

from __future__ import annotations

import hashlib
from typing import Any

from trimaran.errors import NotFound, QueueFull, StaleLease, WorkerSessionLost

STATES = ("waiting", "delayed", "ready", "running", "completed", "failed", "dead", "cancelled", "expired")
PENDING = ("waiting", "delayed", "ready")
ENDED = ("completed", "failed", "cancelled", "expired")
SETTINGS = ("concurrency", "rate_max", "rate_window_ms", "group_concurrency", "group_rate_max", "group_rate_window_ms")
VIEW = (
    "id", "queue", "state", "payload", "priority", "group", "attempt", "max_attempts", "created_at_ms", "run_at_ms",
    "started_at_ms", "finished_at_ms", "lease_until_ms", "session", "progress", "result", "error", "unique_key",
    "depends_on", "cancel_requested", "expires_at_ms",
)  # fmt: skip


class Fail(Exception):
    def __init__(self, cls: type) -> None:
        self.cls = cls


def backoff_delay(backoff: dict[str, Any], job_id: str, attempt: int) -> int:
    if backoff["kind"] == "fixed":
        delay = backoff["delay_ms"]
    else:
        delay = backoff["delay_ms"] * 2 ** (attempt - 1)
    delay = min(delay, backoff["max_ms"])
    fraction = int(hashlib.sha256(f"{job_id}/{attempt}".encode()).hexdigest()[:16], 16) % 1_000_000
    return delay - (delay * backoff["jitter_pct"] // 100) * fraction // 1_000_000


class ModelJobs:
    def __init__(self, default_timeout_ms: int = 300_000, default_result_ttl_ms: int = 24 * 3_600_000, queue_jobs_max: int = 1_000_000) -> None:
        self.default_timeout_ms = default_timeout_ms
        self.default_result_ttl_ms = default_result_ttl_ms
        self.queue_jobs_max = queue_jobs_max
        self.jobs: dict[str, dict[str, Any]] = {}
        self.sessions: dict[str, dict[str, Any]] = {}
        self.queues: dict[str, dict[str, Any]] = {}
        self.unique: dict[tuple[str, str], str] = {}
        self.unique_until: dict[str, int] = {}  # job id -> end of its kept unique key
        self.schedules: dict[str, dict[str, Any]] = {}
        self.index = 0
        self.now = 0
        self.seq = 0

    # ------------------------------------------------------------------ helpers

    def new_id(self) -> str:
        self.seq += 1
        return f"{self.index}-{self.seq - 1}"

    def queue(self, name: str) -> dict[str, Any]:
        if name not in self.queues:
            self.queues[name] = {"paused": False, **dict.fromkeys(SETTINGS, 0), "win": [0, 0], "gwin": {}}
        return self.queues[name]

    def held(self, name: str) -> int:
        return sum(1 for j in self.jobs.values() if j["queue"] == name)

    def view(self, job_id: str) -> dict[str, Any] | None:
        job = self.jobs.get(job_id)
        return None if job is None else {k: job[k] for k in VIEW}

    def stats(self, name: str) -> dict[str, Any]:
        counts = dict.fromkeys(STATES, 0)
        for job in self.jobs.values():
            if job["queue"] == name:
                counts[job["state"]] += 1
        q = self.queues.get(name) or {"paused": False, **dict.fromkeys(SETTINGS, 0)}
        return {**counts, "held": self.held(name), "paused": q["paused"], **{k: q[k] for k in SETTINGS}}

    def session_view(self, sid: str) -> dict[str, Any] | None:
        s = self.sessions.get(sid)
        if s is None:
            return None
        return {"session": sid, "worker": s["worker"], "ttl_ms": s["ttl_ms"], "expires_at_ms": s["expires"], "jobs": list(s["jobs"]), "cancel": list(s["cancel"])}

    def schedules_view(self) -> list[dict[str, Any]]:
        return [
            {"name": name, "queue": s["spec"]["queue"], "cron": None, "every_ms": s["every"], "catch_up": False, "next_ms": s["next"],
             "last_slot_ms": None if s["last"] < 0 else s["last"], "fired": s["fired"], "skipped": s["skipped"]}
            for name, s in sorted(self.schedules.items())
        ]  # fmt: skip

    def ready_query(self, names: list[str]) -> dict[str, Any]:
        ready = [j for j in self.jobs.values() if j["queue"] in names and not self.queue(j["queue"])["paused"]]
        due = [j["run_at_ms"] for j in ready if j["state"] == "delayed"]
        for name in names:
            q = self.queues.get(name)
            if q is None or q["paused"] or not q["rate_max"]:
                continue
            end = q["win"][0] + (q["rate_window_ms"] or 1_000)
            held_back = any(j["queue"] == name and j["state"] == "ready" for j in ready)
            if held_back and q["win"][1] >= q["rate_max"] and end > self.now:
                due.append(end)
        return {"ready": sum(1 for j in ready if j["state"] == "ready"), "next_ms": min(due) if due else None}

    def dlq(self, name: str) -> list[str]:
        dead = [j for j in self.jobs.values() if j["queue"] == name and j["state"] == "dead"]
        return [j["id"] for j in sorted(dead, key=lambda j: (j["finished_at_ms"], j["index"], j["seq"]))]

    # ------------------------------------------------------------------ transitions

    def available(self, job: dict[str, Any], run_at: int) -> None:
        """Waiting if a dependency is unmet; delayed if in the future or returned in its claim's entry."""
        job["run_at_ms"] = run_at
        unmet = [d for d in job["depends_on"] if d in self.jobs and self.jobs[d]["state"] != "completed"]
        if unmet:
            job["state"] = "waiting"
        elif run_at > self.now or job["token"] == self.index:
            job["state"] = "delayed"
        else:
            job["state"] = "ready"

    def leave_running(self, job: dict[str, Any]) -> None:
        s = self.sessions[job["session"]]
        s["jobs"].remove(job["id"])
        if job["id"] in s["cancel"]:
            s["cancel"].remove(job["id"])
        job["session"] = None

    def end(self, job: dict[str, Any], state: str) -> None:
        stack = [job]
        self.end_one(job, state)
        while stack:
            dep = stack.pop()
            waiters = [w for w in self.jobs.values() if w["state"] == "waiting" and dep["id"] in w["depends_on"]]
            for w in waiters:
                if dep["state"] == "completed":
                    unmet = [d for d in w["depends_on"] if d in self.jobs and self.jobs[d]["state"] != "completed"]
                    if not unmet:
                        self.available(w, max(w["run_at_ms"], self.now))
                else:
                    w["error"] = f"dependency {dep['id']} ended {dep['state']}"
                    self.end_one(w, "failed")
                    stack.append(w)

    def end_one(self, job: dict[str, Any], state: str) -> None:
        job["state"] = state
        job["finished_at_ms"] = self.now
        job["cancel_requested"] = False
        kept = 0
        key = (job["queue"], job["unique_key"])
        if job["unique_key"] is not None and self.unique.get(key) == job["id"]:
            if state == "completed" and job["unique_window_ms"]:
                kept = job["unique_window_ms"]
                self.unique_until[job["id"]] = self.now + kept
            else:
                del self.unique[key]
        job["purge_at"] = self.now + max(job["result_ttl_ms"], kept)

    def attempt_ended(self, job: dict[str, Any], error: str, retry: bool, backoff: bool) -> None:
        job["error"] = error
        if job["cancel_requested"]:
            self.end(job, "cancelled")
        elif not retry or job["attempt"] >= job["max_attempts"]:
            self.end(job, "dead")
        else:
            delay = backoff_delay(job["backoff"], job["id"], job["attempt"]) if backoff else 0
            self.available(job, self.now + delay)

    def give_back(self, job: dict[str, Any]) -> None:
        if job["cancel_requested"]:
            self.end(job, "cancelled")
        else:
            job["attempt"] -= 1
            self.available(job, self.now)

    # ------------------------------------------------------------------ time

    def events(self) -> list[tuple[int, int, str]]:
        out = []
        for job in self.jobs.values():
            s, jid = job["state"], job["id"]
            if s == "delayed":
                out.append((job["run_at_ms"], 0, jid))
            if s == "running":
                out.append((job["lease_until_ms"], 1, jid))
            if s in PENDING and job["expires_at_ms"]:
                out.append((job["expires_at_ms"], 3, jid))
            if s in ENDED:
                out.append((job["purge_at"], 5, jid))
        for sid, sess in self.sessions.items():
            out.append((sess["expires"], 2, sid))
        for jid, until in self.unique_until.items():
            out.append((until, 4, jid))
        for name, sched in self.schedules.items():
            out.append((sched["next"], 6, name))
        return out

    def advance(self, index: int, now: int) -> None:
        if index != self.index:
            self.seq = 0
        self.index, self.now = index, now
        while True:
            due = [e for e in self.events() if e[0] <= now]
            if not due:
                return
            _, kind, name = min(due)
            if kind == 0:
                self.jobs[name]["state"] = "ready"
            elif kind == 1:
                job = self.jobs[name]
                self.leave_running(job)
                self.attempt_ended(job, "lease timed out", True, False)
            elif kind == 2:
                sess = self.sessions[name]
                for jid in list(sess["jobs"]):
                    job = self.jobs[jid]
                    self.leave_running(job)
                    self.attempt_ended(job, "worker session lapsed", True, False)
                del self.sessions[name]
            elif kind == 3:
                job = self.jobs[name]
                job["error"] = "expired before it ran"
                self.end(job, "expired")
            elif kind == 4:
                job = self.jobs[name]
                del self.unique_until[name]
                if self.unique.get((job["queue"], job["unique_key"])) == name:
                    del self.unique[(job["queue"], job["unique_key"])]
            elif kind == 5:
                del self.jobs[name]
            else:
                self.fire(self.schedules[name])

    def fire(self, sched: dict[str, Any]) -> None:
        anchor, every = sched["anchor"], sched["every"]
        slot = anchor + (self.now - anchor) // every * every
        spec = sched["spec"]
        if spec.get("unique_key") is not None and (spec["queue"], spec["unique_key"]) in self.unique:
            sched["fired"] += 1
        elif self.held(spec["queue"]) + 1 > self.queue_jobs_max:
            sched["skipped"] += 1
        else:
            self.create(spec)
            sched["fired"] += 1
        sched["last"] = slot
        sched["next"] = slot + every

    # ------------------------------------------------------------------ commands

    def apply(self, cmd: list[Any]) -> tuple[str, Any]:
        try:
            return ("ok", getattr(self, "do_" + cmd[0])(*cmd[1:]))
        except Fail as exc:
            return ("err", exc.cls)

    def create(self, spec: dict[str, Any]) -> str:
        jid = self.new_id()
        self.queue(spec["queue"])
        backoff = {"kind": "exponential", "delay_ms": 1_000, "max_ms": 3_600_000, "jitter_pct": 20, **spec.get("backoff", {})}
        job = {
            "id": jid, "index": self.index, "seq": self.seq - 1, "queue": spec["queue"], "payload": spec["payload"],
            "priority": spec.get("priority", 0), "group": spec.get("group", ""), "attempt": 0,
            "max_attempts": spec.get("max_attempts", 20), "created_at_ms": self.now, "run_at_ms": 0,
            "started_at_ms": 0, "finished_at_ms": 0, "lease_until_ms": 0, "session": None, "progress": None,
            "result": None, "error": None, "unique_key": spec.get("unique_key"), "depends_on": list(spec.get("depends_on", [])),
            "cancel_requested": False, "expires_at_ms": spec.get("expires_at_ms", 0), "token": 0, "backoff": backoff,
            "timeout_ms": spec.get("timeout_ms", self.default_timeout_ms),
            "result_ttl_ms": spec.get("result_ttl_ms", self.default_result_ttl_ms),
            "unique_window_ms": spec.get("unique_window_ms", 0), "state": "",
        }  # fmt: skip
        self.jobs[jid] = job
        if job["unique_key"] is not None:
            self.unique[(job["queue"], job["unique_key"])] = jid
        run_at = max(self.now + spec.get("delay_ms", 0), self.now)
        job["run_at_ms"] = run_at
        for dep in job["depends_on"]:
            state = self.jobs[dep]["state"]
            if state not in ("completed", *PENDING, "running"):
                job["error"] = f"dependency {dep} ended {state}"
                self.end(job, "failed")
                return jid
        if job["expires_at_ms"] and job["expires_at_ms"] <= self.now:
            job["error"] = "expired before it ran"
            self.end(job, "expired")
            return jid
        self.available(job, run_at)
        return jid

    def do_enqueue(self, queue: str, payload: bytes, opts: dict[str, Any] | None = None) -> str:
        return self.do_enqueue_batch([[queue, payload, opts]])[0]

    def do_enqueue_batch(self, items: list[list[Any]]) -> list[str]:
        """Duplicates (a live key, or an earlier item's key) take that job's id; all or nothing."""
        specs = [{"queue": it[0], "payload": it[1], **{k: v for k, v in (it[2] if len(it) > 2 and it[2] else {}).items() if v is not None}} for it in items]
        same_as: list[str | int | None] = []
        for i, spec in enumerate(specs):
            key = (spec["queue"], spec.get("unique_key"))
            earlier = [j for j in range(i) if spec.get("unique_key") is not None and (specs[j]["queue"], specs[j].get("unique_key")) == key]
            if spec.get("unique_key") is not None and key in self.unique:
                same_as.append(self.unique[key])
            elif earlier:
                same_as.append(earlier[0])
            else:
                if any(dep not in self.jobs for dep in spec.get("depends_on", [])):
                    raise Fail(NotFound)
                same_as.append(None)
        fresh = [s for s, same in zip(specs, same_as) if same is None]
        for name in {s["queue"] for s in fresh}:
            if self.held(name) + sum(1 for s in fresh if s["queue"] == name) > self.queue_jobs_max:
                raise Fail(QueueFull)
        out: list[str] = []
        for spec, same in zip(specs, same_as):
            out.append(self.create(spec) if same is None else out[same] if isinstance(same, int) else same)
        return out

    def do_session_open(self, worker: str, ttl_ms: int) -> dict[str, Any]:
        sid = "s" + self.new_id()
        self.sessions[sid] = {"worker": worker, "ttl_ms": ttl_ms, "expires": self.now + ttl_ms, "jobs": [], "cancel": []}
        return {"session": sid, "expires_at_ms": self.now + ttl_ms}

    def live(self, sid: str) -> dict[str, Any]:
        if sid not in self.sessions:
            raise Fail(WorkerSessionLost)
        return self.sessions[sid]

    def do_heartbeat(self, sid: str, opts: dict[str, Any] | None = None) -> dict[str, Any]:
        sess = self.live(sid)
        sess["expires"] = self.now + sess["ttl_ms"]
        lost = []
        for item in (opts or {}).get("jobs", []):
            jid, token = item[0], item[1]
            extra = item[2] if len(item) > 2 and item[2] else {}
            job = self.jobs.get(jid)
            if job is None or job["state"] != "running" or job["token"] != token or job["session"] != sid:
                lost.append(jid)
                continue
            if extra.get("extend_ms") is not None:
                job["lease_until_ms"] = max(job["lease_until_ms"], self.now + extra["extend_ms"])
            if extra.get("progress") is not None:
                job["progress"] = extra["progress"]
        return {"expires_at_ms": sess["expires"], "cancel": list(sess["cancel"]), "lost": lost}

    def do_session_close(self, sid: str) -> list[str]:
        sess = self.live(sid)
        released = list(sess["jobs"])
        for jid in released:
            job = self.jobs[jid]
            self.leave_running(job)
            self.give_back(job)
        del self.sessions[sid]
        return released

    @staticmethod
    def roll(window: list[int], window_ms: int, now: int) -> None:
        window_ms = window_ms or 1_000
        if now >= window[0] + window_ms:
            window[0], window[1] = now - now % window_ms, 0

    def do_claim(self, sid: str, names: list[str], n: int) -> dict[str, Any]:
        sess = self.live(sid)
        ready = [j for j in self.jobs.values() if j["state"] == "ready" and j["queue"] in names and not self.queues[j["queue"]]["paused"]]
        ready.sort(key=lambda j: (-j["priority"], j["run_at_ms"], j["index"], j["seq"]))
        out: list[dict[str, Any]] = []
        for job in ready:
            if len(out) == n:
                break
            q, g = self.queues[job["queue"]], job["group"]
            running = [j for j in self.jobs.values() if j["queue"] == job["queue"] and j["state"] == "running"]
            if q["concurrency"] and len(running) >= q["concurrency"]:
                continue
            if q["rate_max"]:
                self.roll(q["win"], q["rate_window_ms"], self.now)
                if q["win"][1] >= q["rate_max"]:
                    continue
            if g and q["group_concurrency"] and sum(1 for j in running if j["group"] == g) >= q["group_concurrency"]:
                continue
            if g and q["group_rate_max"]:
                gwin = q["gwin"].setdefault(g, [-(1 << 60), 0])
                self.roll(gwin, q["group_rate_window_ms"], self.now)
                if gwin[1] >= q["group_rate_max"]:
                    continue
                gwin[1] += 1
            if q["rate_max"]:
                q["win"][1] += 1
            job.update(state="running", attempt=job["attempt"] + 1, token=self.index, session=sid, started_at_ms=self.now, lease_until_ms=self.now + job["timeout_ms"])
            sess["jobs"].append(job["id"])
            out.append({k: job[k] for k in ("id", "queue", "payload", "attempt", "token", "lease_until_ms", "priority", "group", "progress")})
        return {"jobs": out, "cancel": list(sess["cancel"])}

    def lease(self, jid: str, token: int) -> dict[str, Any]:
        job = self.jobs.get(jid)
        if job is None or job["state"] != "running" or job["token"] != token:
            raise Fail(StaleLease)
        self.leave_running(job)
        return job

    def do_complete(self, jid: str, token: int, opts: dict[str, Any] | None = None) -> str:
        job = self.lease(jid, token)
        job["result"] = (opts or {}).get("result")
        job["error"] = None
        self.end(job, "completed")
        return "completed"

    def do_complete_batch(self, items: list[list[Any]]) -> list[str]:
        out = []
        for item in items:
            try:
                out.append(self.do_complete(*item))
            except Fail:
                out.append("stale_lease")
        return out

    def do_fail(self, jid: str, token: int, opts: dict[str, Any] | None = None) -> str:
        job = self.lease(jid, token)
        opts = opts or {}
        retry = opts.get("retry")
        self.attempt_ended(job, opts.get("error") or "", True if retry is None else retry, True)
        return job["state"]

    def do_release(self, jid: str, token: int) -> str:
        job = self.lease(jid, token)
        self.give_back(job)
        return job["state"]

    def do_ack_cancel(self, jid: str, token: int) -> str:
        job = self.lease(jid, token)
        self.end(job, "cancelled")
        return "cancelled"

    def do_cancel(self, jid: str) -> str:
        job = self.jobs.get(jid)
        if job is None:
            raise Fail(NotFound)
        if job["state"] in PENDING:
            self.end(job, "cancelled")
            return "cancelled"
        if job["state"] == "running":
            if not job["cancel_requested"]:
                job["cancel_requested"] = True
                self.sessions[job["session"]]["cancel"].append(jid)
            return "cancelling"
        return job["state"]

    def dlq_ids(self, queue: str, opts: dict[str, Any] | None) -> list[str]:
        ids = (opts or {}).get("jobs")
        if ids is None:
            return self.dlq(queue)[:1000]
        for jid in ids:
            job = self.jobs.get(jid)
            if job is None or job["queue"] != queue or job["state"] != "dead":
                raise Fail(NotFound)
        return list(ids)

    def do_dlq_requeue(self, queue: str, opts: dict[str, Any] | None = None) -> list[str]:
        ids = self.dlq_ids(queue, opts)
        for jid in ids:
            job = self.jobs[jid]
            job.update(attempt=0, finished_at_ms=0)
            key = (job["queue"], job["unique_key"])
            if job["unique_key"] is not None and key not in self.unique:
                self.unique[key] = jid
            self.available(job, self.now)
        return ids

    def do_dlq_purge(self, queue: str, opts: dict[str, Any] | None = None) -> int:
        ids = self.dlq_ids(queue, opts)
        for jid in ids:
            del self.jobs[jid]
        return len(ids)

    def do_pause(self, queue: str) -> bool:
        q = self.queue(queue)
        changed, q["paused"] = not q["paused"], True
        return changed

    def do_resume(self, queue: str) -> bool:
        q = self.queue(queue)
        changed, q["paused"] = q["paused"], False
        return changed

    def do_queue_config(self, queue: str, opts: dict[str, Any] | None = None) -> dict[str, int]:
        q = self.queue(queue)
        q.update({k: v for k, v in (opts or {}).items() if v is not None})
        return {k: q[k] for k in SETTINGS}

    def do_schedule(self, name: str, queue: str, payload: bytes, opts: dict[str, Any]) -> int:
        every = opts["every_ms"]
        old = self.schedules.get(name)
        after = max(self.now - 1, old["last"] if old else -1)
        anchor = opts.get("start_ms", self.now + every)
        nxt = anchor if after < anchor else anchor + ((after - anchor) // every + 1) * every
        spec = {"queue": queue, "payload": payload, **opts.get("job", {})}
        self.schedules[name] = {"anchor": anchor, "every": every, "spec": spec, "next": nxt, "last": old["last"] if old else -1, "fired": 0, "skipped": 0}
        return nxt

    def do_unschedule(self, name: str) -> bool:
        return self.schedules.pop(name, None) is not None
