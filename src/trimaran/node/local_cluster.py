"""``trimaran up``: a local cluster of ``trimaran node run`` child processes, supervised.

Why child processes rather than three nodes in one process: each node then owns its process,
its LMDB environment and its signals exactly as in production, a crash of one is a crash of one,
and tests of the real thing (kill -9, SIGSTOP) apply to what ``up`` runs.

The supervisor starts the children in their own sessions, so a Ctrl-C in the terminal reaches only
the supervisor, which then stops every child by PID (SIGTERM, graceful; SIGKILL after a bound).
Each child is given ``--parent-pid`` and stops by itself if the supervisor disappears.

A child that exits is reported at once with its exit status and last log lines (its error), and
restarted (its data brings it back): at once after a crash, after a growing pause when it exits
right after starting (it cannot start: a port taken, a bad data directory). Each node has a budget of
``RESTARTS_PER_NODE_MAX`` restarts, given back once it has run ``HEALTHY_RESET_S`` without exiting,
so a node that crashes once a day is never given up on. A node whose budget runs out is left
stopped and the others keep serving, as long as a majority of the nodes can still run; otherwise
the cluster is stopped. Running ``up`` again comes back from the same data.

Secure by default (:class:`LocalSecurity`): auth is on. ``up`` keeps an Ed25519 signing key under
``DATA_DIR/auth/`` (made once, mode 0600; its public key is the nodes' bootstrap key) and writes a
fresh admin token (``admin:*``, valid ``ADMIN_TOKEN_TTL_MS``) to ``DATA_DIR/auth/admin.token`` at
every start; the banner says how to use it (``export TRIMARAN_TOKEN=...``). With ``--tls`` it also
makes a cluster CA and node certificates under ``DATA_DIR/tls/`` (once) and serves TLS on every port.
``--no-auth`` turns auth off (on loopback only; a node beyond loopback refuses without ``--insecure``),
and on data that was served with auth only with ``--allow-auth-off`` too (:mod:`trimaran.node.data_dir`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import trio

from trimaran import limits
from trimaran.errors import ConfigError
from trimaran.node.config import DEFAULT_CLUSTER_ID, Address
from trimaran.node.data_dir import auth_required
from trimaran.node.probe import fetch_status
from trimaran.node.tls import CA_CERT, DEFAULT_HOSTS, client_context, init_certs, issue_cert, node_cert_name
from trimaran.protocols import tokens

#: A child that exits sooner than this after starting counts as failing to start.
EARLY_EXIT_S = 3.0
RESTARTS_PER_NODE_MAX = 5
#: A child that ran this long without exiting gets its whole restart budget back.
HEALTHY_RESET_S = 60.0
#: Pause before restarting a child that failed to start: doubles per restart, up to the max.
RESTART_BACKOFF_S_MIN = 0.5
RESTART_BACKOFF_S_MAX = 8.0
#: Bounds of the supervisor's waits.
LEADER_WAIT_S = 20.0
#: ``trimaran up --nodes``: a local cluster of at most this many nodes (ports base+1.., base+101..).
UP_NODES_MAX = 9
STOP_WAIT_S = 15.0
POLL_INTERVAL_S = 0.1
#: Lifetime of the admin token ``up`` writes at each start (a new one replaces it at the next start).
ADMIN_TOKEN_TTL_MS = 30 * 24 * 3600 * 1000
ADMIN_SUB = "trimaran-up-admin"

assert ADMIN_TOKEN_TTL_MS <= limits.token_ttl_ms_max


@dataclass(frozen=True, slots=True)
class LocalSecurity:
    """What ``up`` turned on, and the files that hold it (None: off)."""

    #: The nodes' bootstrap key (``--auth-public-key``) and the admin token signed with its private key.
    public_key_path: Path | None = None
    token_path: Path | None = None
    token: str | None = None
    #: The certificates of ``certs init`` (``--tls-dir``), and the CA clients verify nodes with.
    tls_dir: Path | None = None
    ca_file: Path | None = None
    #: Passed to every node: listen beyond loopback without TLS or auth.
    insecure: bool = False
    probe_context: ssl.SSLContext | None = field(default=None, compare=False)
    #: Passed to every node: start with auth off on data that was served with auth.
    allow_auth_off: bool = False

    def node_args(self) -> list[str]:
        argv = []
        if self.public_key_path is not None:
            argv += ["--auth-public-key", str(self.public_key_path)]
        if self.tls_dir is not None:
            argv += ["--tls-dir", str(self.tls_dir)]
        if self.insecure:
            argv.append("--insecure")
        if self.allow_auth_off:
            argv.append("--allow-auth-off")
        return argv


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _replace_private(path: Path, data: bytes) -> None:
    """Write ``path`` (mode 0600 from the start) by renaming a new file over it."""
    tmp = path.with_name(path.name + ".new")
    tmp.unlink(missing_ok=True)
    _write_new(tmp, data, 0o600)
    os.replace(tmp, path)


def prepare_security(
    data_dir: str,
    cluster_id: str,
    *,
    auth: bool = True,
    tls: bool = False,
    hosts: tuple[str, ...] = (),
    insecure: bool = False,
    size: int = 3,
) -> LocalSecurity:
    """Make (once) the signing key and the TLS certificates ``up`` needs under ``data_dir``, and a
    fresh admin token; see the module docstring."""
    root = Path(data_dir)
    public_key_path = token_path = tls_dir = ca_file = None
    token = None
    if auth:
        auth_dir = root / "auth"
        auth_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(auth_dir, 0o700)
        key_path, public_key_path = auth_dir / "signing-key.pem", auth_dir / "signing-key.pub"
        if not key_path.exists():
            private = tokens.new_private_key()
            _write_new(key_path, private, 0o600)
            public_key_path.unlink(missing_ok=True)
        private = key_path.read_bytes()
        public = tokens.public_key_of(private)
        if not public_key_path.exists():
            _write_new(public_key_path, tokens.public_key_pem(public), 0o644)
        token = tokens.sign(
            private,
            kid=tokens.key_id(public),
            sub=ADMIN_SUB,
            scopes=["admin:*"],
            audience=cluster_id,
            now_ms=int(time.time() * 1000),
            ttl_ms=ADMIN_TOKEN_TTL_MS,
            jti=secrets.token_hex(12),
        )
        token_path = auth_dir / "admin.token"
        _replace_private(token_path, token.encode() + b"\n")
    if tls:
        tls_dir = root / "tls"
        ca_file = tls_dir / CA_CERT
        cert_hosts = tuple(dict.fromkeys(hosts + DEFAULT_HOSTS))
        if not ca_file.exists():
            init_certs(tls_dir, range(1, size + 1), hosts=cert_hosts, cluster_id=cluster_id)
        for node_id in range(1, size + 1):  # a cluster started before with fewer nodes
            if not (tls_dir / node_cert_name(node_id)).exists():
                issue_cert(tls_dir, node_id, hosts=cert_hosts)
    return LocalSecurity(
        public_key_path, token_path, token, tls_dir, ca_file, insecure, client_context(ca_file) if ca_file else None
    )


#: ``trimaran up``'s node i serves the Redis protocol on RESP_BASE_PORT + i.
RESP_BASE_PORT = 6380


@dataclass(frozen=True, slots=True)
class LocalNode:
    node_id: int
    client: Address
    peer: Address
    data_dir: Path
    log_path: Path
    #: The REST API (and the WebSocket gateway to come).
    http: Address
    #: The Redis protocol (None: not served; with TLS on, it serves TLS only, as every port does).
    resp: Address | None = None


def local_nodes(
    data_dir: str, base_port: int, host: str = "127.0.0.1", size: int = 3, resp_base_port: int | None = RESP_BASE_PORT
) -> list[LocalNode]:
    """Node i gets client port base+i, peer port base+100+i, HTTP port base+1000+i and RESP port
    resp_base_port+i (6381.. by default, Redis's 6379 left free; None: no RESP), data in
    DATA_DIR/node<i>."""
    root = Path(data_dir)
    if not 1 <= size <= UP_NODES_MAX:
        raise ConfigError(f"--nodes must be 1..{UP_NODES_MAX}, not {size}")
    made = [i for i in range(1, limits.members_max + 1) if (root / f"node{i}").is_dir()]
    if made and made != list(range(1, size + 1)):
        raise ConfigError(
            f"{data_dir} holds the data of a {len(made)}-node cluster (nodes {made}): start it with --nodes {len(made)}, "
            f"or use another --data-dir (to grow a running cluster, see `trimaran member add`)"
        )
    if base_port < 1 or base_port + 1000 + size > 65535:
        raise ConfigError(f"base port {base_port} leaves no room for {size} nodes")
    if resp_base_port is not None and not 1 <= resp_base_port <= 65535 - size:
        raise ConfigError(f"RESP base port {resp_base_port} leaves no room for {size} nodes")
    return [
        LocalNode(
            i,
            Address(host, base_port + i),
            Address(host, base_port + 100 + i),
            root / f"node{i}",
            root / f"node{i}.log",
            Address(host, base_port + 1000 + i),
            None if resp_base_port is None else Address(host, resp_base_port + i),
        )
        for i in range(1, size + 1)
    ]


def node_argv(
    node: LocalNode,
    nodes: list[LocalNode],
    cluster_id: str,
    tick_ms: int,
    parent_pid: int,
    security: LocalSecurity = LocalSecurity(),
) -> list[str]:
    """The ``python -m trimaran node run`` command line of one local node."""
    argv = [
        sys.executable, "-m", "trimaran", "node", "run",
        "--id", str(node.node_id),
        "--listen", str(node.client),
        "--peer-listen", str(node.peer),
        "--http-listen", str(node.http),
        "--data-dir", str(node.data_dir),
        "--cluster-id", cluster_id,
        "--tick-ms", str(tick_ms),
        "--parent-pid", str(parent_pid),
        *security.node_args(),
    ]  # fmt: skip
    if node.resp is not None:
        argv += ["--resp-listen", str(node.resp)]
    for other in nodes:
        if other.node_id != node.node_id:
            argv += ["--peer", f"{other.node_id}={other.peer}", "--peer-client", f"{other.node_id}={other.client}"]
    return argv


def check_ports_free(nodes: list[LocalNode]) -> None:
    """Fail early with one clear line if a port is taken (another ``up`` is probably running)."""
    for node in nodes:
        for address in (node.client, node.peer, node.http, node.resp):
            if address is None:
                continue
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((address.host, address.port))
                except OSError as exc:
                    raise ConfigError(
                        f"{address} is not free ({exc.strerror}); is another `trimaran up` (or a Redis) running? "
                        "Try --base-port or --resp-base-port"
                    ) from None


#: Lines of a node's log shown when it exits (its last one, the error, and those just before it).
EXIT_LOG_LINES = 4


def _last_lines(path: Path, count: int) -> list[str]:
    try:
        lines = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return []
    return lines[-count:]


def _last_line(path: Path) -> str:
    lines = _last_lines(path, 1)
    return lines[0] if lines else ""


@dataclass(slots=True)
class RestartDecision:
    #: Restart the child (False: its budget is spent; leave it stopped).
    restart: bool
    #: After this pause (0: at once).
    delay_s: float
    #: It exited within EARLY_EXIT_S of starting: it cannot start.
    early: bool
    #: Restarts used of the budget, counting this one.
    restarts: int


class RestartBudget:
    """When to restart one child, from its start and exit times alone (the caller's clock, so
    tests can run hours in a line): at most ``restarts_max`` restarts, all given back once the child
    has run ``healthy_reset_s``; a child that failed to start waits a doubling pause first."""

    def __init__(
        self,
        restarts_max: int = RESTARTS_PER_NODE_MAX,
        healthy_reset_s: float = HEALTHY_RESET_S,
        early_exit_s: float = EARLY_EXIT_S,
    ) -> None:
        assert restarts_max >= 0 and healthy_reset_s > early_exit_s > 0
        self.restarts_max = restarts_max
        self.healthy_reset_s = healthy_reset_s
        self.early_exit_s = early_exit_s
        self.restarts = 0

    def on_exit(self, started_at: float, exited_at: float) -> RestartDecision:
        ran_s = exited_at - started_at
        if ran_s >= self.healthy_reset_s:
            self.restarts = 0  # it was healthy: this exit starts a new count
        early = ran_s < self.early_exit_s
        if self.restarts >= self.restarts_max:
            return RestartDecision(False, 0.0, early, self.restarts)
        self.restarts += 1
        delay_s = min(RESTART_BACKOFF_S_MIN * 2 ** (self.restarts - 1), RESTART_BACKOFF_S_MAX) if early else 0.0
        return RestartDecision(True, delay_s, early, self.restarts)


class _Child:
    def __init__(self, node: LocalNode, argv: list[str]) -> None:
        self.node = node
        self.argv = argv
        self.process: trio.Process | None = None
        self.started_at = 0.0
        self.budget = RestartBudget()
        #: When a pending restart is due (None: none pending).
        self.restart_at: float | None = None
        #: Its budget is spent: left stopped.
        self.given_up = False

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        self.node.data_dir.parent.mkdir(parents=True, exist_ok=True)
        with open(self.node.log_path, "ab") as log_file:
            # Own session: terminal signals go to the supervisor only; it stops children by PID.
            self.process = await trio.lowlevel.open_process(
                self.argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.started_at = trio.current_time()

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            try:
                os.kill(self.process.pid, signum)
            except ProcessLookupError:
                pass


class Supervisor:
    """Watches the children: reports an exit at once with the node's own error, restarts within
    its budget, and says when too few nodes are left to form a majority. One :meth:`step` is one
    look at every child; ``clock`` is injectable so tests control time."""

    def __init__(
        self, children: list[_Child], echo: Callable[[str], None], clock: Callable[[], float] = trio.current_time
    ) -> None:
        self.children = children
        self.echo = echo
        self.clock = clock

    def quorum_possible(self) -> bool:
        """A majority of the nodes is running or will be restarted."""
        alive = sum(1 for child in self.children if not child.given_up)
        return alive > len(self.children) // 2

    async def step(self) -> bool:
        """Handle exits and due restarts; False once a majority can no longer run."""
        now = self.clock()
        for child in self.children:
            if child.given_up:
                continue
            if child.restart_at is not None:
                if now >= child.restart_at:
                    child.restart_at = None
                    await child.start()
                continue
            proc = child.process
            assert proc is not None
            if proc.returncode is None:
                continue
            self._on_exit(child, proc.returncode, now)
        return self.quorum_possible()

    def _on_exit(self, child: _Child, returncode: int, now: float) -> None:
        node = child.node
        ran_s = now - child.started_at
        decision = child.budget.on_exit(child.started_at, now)
        what = "could not start" if decision.early else "exited"
        *before, last = _last_lines(node.log_path, EXIT_LOG_LINES) or ["(no output)"]
        self.echo(f"trimaran: node {node.node_id} {what} (status {returncode} after {ran_s:.1f} s): {last}")
        for line in before:  # what led to it (a traceback's frames, the lines before the error)
            self.echo(f"    | {line}")
        if not decision.restart:
            child.given_up = True
            self.echo(
                f"trimaran: node {node.node_id} cannot be kept running ({decision.restarts} restarts); "
                f"leaving it stopped (see {node.log_path})"
            )
            return
        pause = f" in {decision.delay_s:g} s" if decision.delay_s else ""
        self.echo(f"trimaran: restarting node {node.node_id}{pause} ({decision.restarts}/{child.budget.restarts_max})")
        child.restart_at = now + decision.delay_s


async def _wait_for_leader(children: list[_Child], cluster_id: str, security: LocalSecurity) -> dict[str, object] | None:
    """The status of a leader among the running children, or None after LEADER_WAIT_S."""
    with trio.move_on_after(LEADER_WAIT_S):
        while True:
            for child in children:
                if not child.running:
                    continue  # the supervisor reports it; the others may still elect
                status = await fetch_status(
                    child.node.client, cluster_id, timeout_s=0.5, token=security.token, ssl_context=security.probe_context
                )
                if status and status.get("role") == "leader":
                    return status
            await trio.sleep(POLL_INTERVAL_S)
    return None


def cli_command() -> str:
    """How to run the CLI from the user's shell: ``trimaran`` when it is on PATH, else the script
    beside this Python (``.venv/bin/trimaran`` after ``make run``, which does not activate the venv)."""
    if shutil.which("trimaran"):
        return "trimaran"
    script = os.path.join(os.path.dirname(sys.executable), "trimaran")
    return os.path.relpath(script) if os.path.exists(script) else "python -m trimaran"


def _banner(
    nodes: list[LocalNode], data_dir: str, cluster_id: str, leader: object, default_ports: bool, security: LocalSecurity
) -> str:
    endpoints = ",".join(str(n.client) for n in nodes)
    lines = [f"trimaran: cluster {cluster_id!r} is up — {len(nodes)} nodes, leader: node {leader}, data in {data_dir}"]
    for n in nodes:
        resp = f"  redis {n.resp}" if n.resp is not None else ""
        lines.append(f"  node {n.node_id}  clients {n.client}  peers {n.peer}  http {n.http}{resp}  log {n.log_path}")
    if security.token_path is not None:
        lines.append(f"Auth is on: an admin token (admin:*) is in {security.token_path}")
    else:
        lines.append("Auth is off (--no-auth): any local process may read and write everything.")
    if security.ca_file is not None:
        lines.append(f"TLS is on: clients verify the nodes with {security.ca_file}")
    lines += ["", "Try next (in another terminal):"]
    if security.token_path is not None:
        lines.append(f"  export TRIMARAN_TOKEN=$(cat {security.token_path})")
    if security.ca_file is not None:
        lines.append(f"  export TRIMARAN_CA_FILE={security.ca_file}")
    if not default_ports:
        lines.append(f"  export TRIMARAN_ENDPOINTS={endpoints}")
    addresses = ", ".join(f'"{n.client}"' for n in nodes)
    cli = cli_command()
    python = "python" if shutil.which("trimaran") else os.path.relpath(sys.executable)
    lines += [
        f"  {cli} status",
        f"  {cli} kv set greeting hello && {cli} kv get greeting",
        "  " + _curl_line(nodes[0], security),
        *(["  " + _redis_cli_line(nodes[0].resp, security)] if nodes[0].resp is not None else []),
        "",
        f"Chat in a browser: {'https' if security.ca_file else 'http'}://{nodes[0].http}/chat"
        + (f" (paste the token from {security.token_path})" if security.token_path else ""),
        "",
        f"From Python ({python}):",
        "  import trimaran",
        f"  with trimaran.connect_sync([{addresses}]) as c:",
        '      c.kv.set("greeting", "hello", ttl_ms=60_000)',
        '      print(c.kv.get("greeting").value)',
        "",
        # The pid is this process's: under `make run` the one a script started is make's.
        f"Ctrl-C or `kill {os.getpid()}` stops the cluster; `trimaran up` again comes back from {data_dir}.",
    ]
    return "\n".join(lines)


def _curl_line(node: LocalNode, security: LocalSecurity) -> str:
    """The REST API from a shell (any node: a follower forwards what only the leader serves)."""
    auth = ' -H "Authorization: Bearer $TRIMARAN_TOKEN"' if security.token_path is not None else ""
    scheme, ca = ("https", f" --cacert {security.ca_file}") if security.ca_file is not None else ("http", "")
    return f"curl -s{auth}{ca} {scheme}://{node.http}/v1/kv/greeting"


def _redis_cli_line(resp: Address, security: LocalSecurity) -> str:
    """The Redis protocol from a shell (the token is the password; any user name)."""
    auth = ' -a "$TRIMARAN_TOKEN" --no-auth-warning' if security.token_path is not None else ""
    host = "" if resp.host == "127.0.0.1" else f" -h {resp.host}"
    tls = f" --tls --cacert {security.ca_file}" if security.ca_file is not None else ""
    return f"redis-cli{host} -p {resp.port}{tls}{auth} set greeting hello"


async def _supervise(supervisor: Supervisor, echo: Callable[[str], None]) -> int:
    """Run the supervisor until a majority of the nodes can no longer run; then 1."""
    while await supervisor.step():
        await trio.sleep(POLL_INTERVAL_S)
    down = ", ".join(str(c.node.node_id) for c in supervisor.children if c.given_up)
    echo(f"trimaran: nodes {down} cannot run: no majority is left; stopping the cluster")
    return 1


async def _stop_all(children: list[_Child], echo: Callable[[str], None]) -> None:
    for child in children:
        child.signal(signal.SIGTERM)
    with trio.move_on_after(STOP_WAIT_S):
        for child in children:
            if child.process is not None:
                await child.process.wait()
    for child in children:
        if child.process is not None and child.process.returncode is None:
            echo(f"trimaran: node {child.node.node_id} did not stop in {STOP_WAIT_S:g} s; killing it")
            child.signal(signal.SIGKILL)
            await child.process.wait()


async def run_local_cluster_async(
    data_dir: str,
    base_port: int,
    cluster_id: str,
    tick_ms: int,
    echo: Callable[[str], None],
    host: str = "127.0.0.1",
    security: LocalSecurity = LocalSecurity(),
    resp_base_port: int | None = RESP_BASE_PORT,
    size: int = 3,
) -> int:
    nodes = local_nodes(data_dir, base_port, host, size, resp_base_port=resp_base_port)
    check_ports_free(nodes)
    children = [_Child(n, node_argv(n, nodes, cluster_id, tick_ms, os.getpid(), security)) for n in nodes]
    status = 0
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        try:
            async with trio.open_nursery() as nursery:

                async def stop_on_signal() -> None:
                    async for _ in signals:
                        echo("\ntrimaran: stopping the cluster ...")
                        nursery.cancel_scope.cancel()
                        return

                nursery.start_soon(stop_on_signal)
                for child in children:
                    await child.start()
                supervisor = Supervisor(children, echo)

                async def supervise() -> None:
                    # From the first moment: a node that cannot start is reported at once, and the
                    # others go on electing a leader without it.
                    nonlocal status
                    status = await _supervise(supervisor, echo)
                    nursery.cancel_scope.cancel()

                nursery.start_soon(supervise)
                leader = await _wait_for_leader(children, cluster_id, security)
                if leader is None:
                    echo(f"trimaran: no leader within {LEADER_WAIT_S:g} s; see the logs in {data_dir}")
                    for n in nodes:
                        echo(f"  node {n.node_id}: {_last_line(n.log_path)}")
                    status = 1
                    nursery.cancel_scope.cancel()
                else:
                    echo(
                        _banner(
                            nodes, data_dir, cluster_id, leader.get("node_id"), base_port == 7000 and host == "127.0.0.1", security
                        )
                    )
                    down = [c.node.node_id for c in children if not c.running]
                    if down:
                        echo(f"trimaran: serving without node(s) {', '.join(map(str, down))}; see the messages above")
        finally:
            with trio.CancelScope(shield=True):
                await _stop_all(children, echo)
    echo("trimaran: stopped")
    return status


def run_local_cluster(
    data_dir: str = "./trimaran-data",
    base_port: int = 7000,
    cluster_id: str = DEFAULT_CLUSTER_ID,
    tick_ms: int = 50,
    echo: Callable[[str], None] = print,
    host: str = "127.0.0.1",
    *,
    auth: bool = True,
    tls: bool = False,
    insecure: bool = False,
    allow_auth_off: bool = False,
    resp_base_port: int | None = RESP_BASE_PORT,
    size: int = 3,
) -> int:
    """Blocking entry point of ``trimaran up``; returns the process exit status."""
    if not Address(host, base_port).is_loopback() and not insecure and not (auth and tls):
        # The nodes would refuse too (NodeConfig.exposure_problem), each in its own log: say it once, here.
        raise ConfigError(
            f"refusing to listen on {host} without TLS and auth: anyone who can reach it could read and write "
            "everything; pass --tls (auth is on unless --no-auth), or --insecure to accept the risk"
        )
    nodes = local_nodes(data_dir, base_port, host, size, resp_base_port=resp_base_port)  # refuse a bad size before making keys
    if not auth and not allow_auth_off and any(auth_required(str(n.data_dir)) for n in nodes):
        # The nodes would refuse too (data_dir.check_auth), each in its own log: say it once, here.
        raise ConfigError(
            f"refusing --no-auth on {data_dir}: its nodes' data was served with tokens required, and anyone could "
            "now read and write it; drop --no-auth, or pass --allow-auth-off to accept the risk"
        )
    security = prepare_security(data_dir, cluster_id, auth=auth, tls=tls, hosts=(host,), insecure=insecure, size=size)
    if allow_auth_off and not auth:
        security = replace(security, allow_auth_off=True)
    return trio.run(run_local_cluster_async, data_dir, base_port, cluster_id, tick_ms, echo, host, security, resp_base_port, size)
