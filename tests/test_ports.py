"""The per-worker base ports of tests/ports.py: two workers' `up` clusters never share a port."""

from __future__ import annotations

import pytest

from tests.ports import worker_bases, worker_ports

#: The offsets `trimaran up` adds to its base port (clients, peers, RESP at 500 or 2000, HTTP).
OFFSETS = (0, 100, 500, 1000, 2000)


def ports_of(bases: list[int], nodes: int) -> set[int]:
    return {base + step + i for base in bases for step in OFFSETS for i in range(1, nodes + 1)}


@pytest.mark.parametrize("workers", [2, 3, 4])
def test_workers_draw_bases_whose_clusters_never_share_a_port(monkeypatch: pytest.MonkeyPatch, workers: int) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", str(workers))
    taken: list[set[int]] = []
    for k in range(workers):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{k}")
        bases = worker_bases(range(20_000, 21_000))
        assert len(bases) >= 1000 // 100  # plenty left to draw from
        taken.append(ports_of(bases, 5))
    for a in range(workers):
        for b in range(a + 1, workers):
            assert not taken[a] & taken[b]


def test_outside_xdist_every_base_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
    assert worker_bases(range(5, 50)) == list(range(5, 50))


def test_workers_draw_single_ports_apart(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "2")
    shares = []
    for k in (0, 1):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", f"gw{k}")
        shares.append(set(worker_ports(range(100, 200))))
    assert len(shares[0]) == len(shares[1]) == 50 and not shares[0] & shares[1]
