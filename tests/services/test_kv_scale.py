"""Opt-in measurement: memory per key and snapshot/restore time for 1,000,000 keys of 100 bytes.

Run with ``TRIMARAN_KV_SCALE=1 .venv/bin/python -m pytest tests/services/test_kv_scale.py -s``.
It prints numbers and asserts only correctness (timings vary by machine; no timing assertions).
Key count can be changed with ``TRIMARAN_KV_SCALE_KEYS``.
"""

from __future__ import annotations

import gc
import os
import time
import tracemalloc

import pytest

from trimaran.protocols.codec import pack, unpack
from trimaran.protocols.service import ApplyContext
from trimaran.services.kv import ENTRY_OVERHEAD_BYTES, KvService
from trimaran.services.kv_args import mset_keys_max

pytestmark = pytest.mark.skipif(not os.environ.get("TRIMARAN_KV_SCALE"), reason="set TRIMARAN_KV_SCALE=1 to run")

VALUE_BYTES = 100


def fill(svc: KvService, key_count: int) -> None:
    """Load ``key_count`` keys through ``apply`` (msets, as a client would), distinct values."""
    index = 0
    for start in range(0, key_count, mset_keys_max):
        index += 1
        pairs = [
            [b"key:%010d" % i, (b"%010d" % i) * (VALUE_BYTES // 10)] for i in range(start, min(key_count, start + mset_keys_max))
        ]
        svc.apply(["mset", pairs], ApplyContext(index, index))


def test_memory_per_key_and_snapshot_restore_time() -> None:
    key_count = int(os.environ.get("TRIMARAN_KV_SCALE_KEYS", "1000000"))
    # The watch window is kept small so the measurement is of the keys, not of recent history.
    make = lambda: KvService(watch_history_max=1)  # noqa: E731
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    svc = make()
    fill(svc, key_count)
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    payload = 14 + VALUE_BYTES  # b"key:%010d" + value
    print(f"\n{key_count} keys of {VALUE_BYTES} bytes: {used / key_count:.1f} bytes/key traced "
          f"(payload {payload}, overhead {used / key_count - payload:.1f}; ENTRY_OVERHEAD_BYTES={ENTRY_OVERHEAD_BYTES})")  # fmt: skip

    t0 = time.perf_counter()
    snap = svc.snapshot()
    t1 = time.perf_counter()
    data = pack(snap)
    t2 = time.perf_counter()
    decoded = unpack(data, size_bytes_max=len(data))
    t3 = time.perf_counter()
    other = make()
    other.restore(decoded)
    t4 = time.perf_counter()
    print(f"snapshot {t1 - t0:.2f} s, pack {t2 - t1:.2f} s ({len(data) / 1e6:.0f} MB), unpack {t3 - t2:.2f} s, "
          f"restore {t4 - t3:.2f} s; total {t4 - t0:.2f} s")  # fmt: skip
    del snap, decoded
    assert pack(other.snapshot()) == data
