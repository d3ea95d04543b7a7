"""The trio runtime that runs a node: real sockets, real LMDB, real clocks around the pure core.

Modules, one job each:

- :mod:`~trimaran.node.config` — ``NodeConfig`` (identity, addresses, peers, bounds) and ``validate()``;
- :mod:`~trimaran.node.driver` — the loop that owns the Replica and runs the Ready protocol (an idle
  loop lets the reader that delivered an input run its round, saving a scheduler pass);
- :mod:`~trimaran.node.writer` — the LMDB writer thread (group commit), and the small inline writes a
  follower makes on the driver's thread when that thread is idle;
- :mod:`~trimaran.node.transport` — peer TCP: handshake, limits, drop-when-full queues written
  straight from the driver's round, reconnects;
- :mod:`~trimaran.node.client_server` — the client port (:mod:`trimaran.protocols.client_protocol`);
- :mod:`~trimaran.node.node` — wires them together; graceful shutdown; the process entry point;
- :mod:`~trimaran.node.local_cluster` — ``trimaran up``: supervised local node processes;
- :mod:`~trimaran.node.probe`, :mod:`~trimaran.node.streams` — small helpers.
"""

from trimaran.node.config import Address, NodeConfig, PeerSpec
from trimaran.node.node import Node, run_node_process

__all__ = ["Address", "Node", "NodeConfig", "PeerSpec", "run_node_process"]
