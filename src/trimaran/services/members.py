"""The members directory: where each node of the cluster listens, replicated through the log.

Raft's membership (voters, learners) holds node ids only; the addresses that let nodes reach a new
member travel here, as etcd carries a member's peer URLs in its conf change context. ``trimaran
member add`` first records the new node's addresses, then proposes it as a learner: every node has
applied the addresses before the learner must be reached. A node's runtime watches
:attr:`MembersService.generation` after each apply round and dials the members it did not know.
Nodes started with ``--peer`` flags need no entry here; an entry overrides a flag.

Commands (through the log, exactly-once):

==========  ===================================================  ================================
op          arguments                                            result
==========  ===================================================  ================================
``set``     node_id (int >= 1), peer address ("host:port"),      True if it changed the entry
            client address ("host:port" or None)
``forget``  node_id                                              True if there was an entry
==========  ===================================================  ================================

Queries: ``["list"]`` -> ``[[node_id, peer_address, client_address], ...]`` by node id.

Addresses are checked for shape (host and a port in 1..65535, bounded length), not reachability.
At most ``limits.members_max`` entries; a ``set`` beyond that raises ``TooLarge``.
"""

from __future__ import annotations

from typing import Any

from trimaran import limits
from trimaran.errors import InvalidArgument, TooLarge
from trimaran.protocols.codec import brief
from trimaran.protocols.service import ApplyContext

#: Longest "host:port" accepted (a DNS name is at most 253 characters).
ADDRESS_CHARS_MAX = 270


def check_address(value: Any, what: str) -> str:
    """A "host:port" text, else InvalidArgument naming ``what``."""
    if type(value) is not str or not 3 <= len(value) <= ADDRESS_CHARS_MAX:
        raise InvalidArgument(f"{what} must be host:port text of at most {ADDRESS_CHARS_MAX} characters, not {brief(value)}")
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535 or any(c.isspace() for c in value):
        raise InvalidArgument(f"{what} must be host:port with a port in 1..65535, not {brief(value)}")
    return value


def _node_id(value: Any) -> int:
    if type(value) is not int or not 1 <= value < 1 << 31:
        raise InvalidArgument(f"node_id must be a positive integer, not {brief(value)}")
    return value


class MembersService:
    """The ``members`` service; see the module docstring."""

    name = "members"

    def __init__(self) -> None:
        #: node id -> (peer address, client address or None).
        self.entries: dict[int, tuple[str, str | None]] = {}
        #: Moves with every change, so a node's runtime notices in one int compare.
        self.generation = 0

    def apply(self, command: Any, ctx: ApplyContext) -> Any:
        if type(command) is not list or not command or type(command[0]) is not str:
            raise InvalidArgument("command must be [op, ...]")
        op, args = command[0], command[1:]
        if op == "set" and len(args) == 3:
            node_id = _node_id(args[0])
            peer = check_address(args[1], "the peer address")
            client = None if args[2] is None else check_address(args[2], "the client address")
            if self.entries.get(node_id) == (peer, client):
                return False
            if node_id not in self.entries and len(self.entries) >= limits.members_max:
                raise TooLarge(f"already {limits.members_max} members recorded (members_max)")
            self.entries[node_id] = (peer, client)
            self.generation += 1
            return True
        if op == "forget" and len(args) == 1:
            if self.entries.pop(_node_id(args[0]), None) is None:
                return False
            self.generation += 1
            return True
        raise InvalidArgument(f"unknown members command {brief(op)} with {len(args)} arguments")

    def on_time(self, ctx: ApplyContext) -> None:
        pass

    def next_deadline_ms(self) -> int | None:
        return None

    def query(self, query: Any, ctx: ApplyContext) -> Any:
        if query == ["list"]:
            return [[n, peer, client] for n, (peer, client) in sorted(self.entries.items())]
        raise InvalidArgument(f"unknown members query {brief(query)}")

    def snapshot(self) -> Any:
        return {"entries": [[n, peer, client] for n, (peer, client) in sorted(self.entries.items())], "generation": self.generation}

    def restore(self, data: Any) -> None:
        self.entries = {int(n): (str(peer), None if client is None else str(client)) for n, peer, client in data["entries"]}
        self.generation = int(data["generation"])
