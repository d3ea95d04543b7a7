"""`trimaran status` names a node that refuses leadership because its clock is off (issue 16 item 10)."""

from __future__ import annotations

from trimaran.client.connection import Address
from trimaran.client.status import NodeStatus, merge


def node(node_id: int, clock: dict[str, object]) -> NodeStatus:
    raw = {"node_id": node_id, "role": "follower", "term": 2, "leader_id": 2, "voters": [1, 2, 3], "clock": clock}
    return NodeStatus(Address("127.0.0.1", 7000 + node_id), node_id, up=True, role="follower", term=2, leader_id=2, raw=raw)


def test_the_table_names_a_node_whose_clock_is_off() -> None:
    fast = {
        "offset_ms_max": 500,
        "suspect": True,
        "peers": [{"node_id": 2, "offset_ms": -30_002}, {"node_id": 3, "offset_ms": None}],
    }
    good = {"offset_ms_max": 500, "suspect": False, "peers": [{"node_id": 1, "offset_ms": 30_002}]}
    table = merge([node(1, fast), node(2, good), node(3, {"garbage": 1})], {}).format_table()
    lines = [line for line in table.splitlines() if "clock" in line]
    assert lines == [
        "node 1: clock not within 500 ms of a majority of the voters; it will not lead "
        "(peer clocks minus its own: 2: -30002 ms, 3: unknown)"
    ]
