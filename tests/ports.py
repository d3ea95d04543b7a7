"""Ports for tests under pytest-xdist: single ports (:func:`worker_ports`) and base ports for tests
that start `trimaran up`, which takes fixed offsets from one base port (:func:`worker_bases`).

Under pytest-xdist two workers may pick bases at the same moment, and a port that one worker found
free may be bound by the other's cluster before its own `up` binds it. So each worker draws from its
own residue class: with N workers, worker k uses bases with ``base % M == k * M // N`` where M (10,
20, 25, 50 or 100) divides the offsets `up` adds (100, 500, 1000, 2000). A cluster of at most
``M // N`` nodes then only ever binds ports whose residues are k's own, so two workers' clusters
never share a port.
"""

from __future__ import annotations

import os
import random
import socket

#: The moduli that divide every offset `up` adds to its base port.
_MODULI = (10, 20, 25, 50, 100)
#: Bases tried before a test gives up on finding one whose ports are all free.
BASE_TRIES_MAX = 50


def _worker() -> tuple[int, int] | None:
    """(this xdist worker's index, the number of workers), or None outside xdist (or with one)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or workers <= 1:
        return None
    return int(worker[2:]), workers


def worker_bases(ports: range, nodes_max: int = 5) -> list[int]:
    """The bases in ``ports`` this xdist worker may use (all of them outside xdist)."""
    worker = _worker()
    if worker is None:
        return list(ports)
    index, workers = worker
    modulus = next((m for m in _MODULI if m // workers >= nodes_max), None)
    assert modulus is not None, f"{workers} workers leave no room for {nodes_max}-node clusters"
    residue = index * (modulus // workers)
    return [base for base in ports if base % modulus == residue]


def worker_ports(ports: range) -> list[int]:
    """The single ports in ``ports`` this xdist worker may use: ``port % N == k`` (all of them
    outside xdist)."""
    worker = _worker()
    if worker is None:
        return list(ports)
    index, workers = worker
    return [port for port in ports if port % workers == index]


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``port`` can be bound now (with SO_REUSEADDR, as the nodes' listeners bind)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def free_base(bases: list[int], offsets: tuple[int, ...] | list[int]) -> int:
    """A base from ``bases`` (this worker's: :func:`worker_bases`) whose ports ``base + offset`` are
    all free now."""
    rng = random.Random()
    for _ in range(BASE_TRIES_MAX):
        base = rng.choice(bases)
        if all(port_free(base + offset) for offset in offsets):
            return base
    raise AssertionError(f"no base port of this worker's in {bases[0]}..{bases[-1]} with all its ports free")
