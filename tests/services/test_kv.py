"""Unit tests of the KV service: every command, query and error, one behaviour per test."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest

from trimaran import limits
from trimaran.errors import (
    ConditionFailed,
    ConfigError,
    InvalidArgument,
    OutOfMemory,
    RevisionCompacted,
    TooLarge,
    TrimaranError,
)
from trimaran.protocols.codec import pack, unpack
from trimaran.protocols.service import ApplyContext, Service
from trimaran.services.kv import ENTRY_OVERHEAD_BYTES, KvService, entry_bytes
from trimaran.services.kv_args import INT64_MAX, INT64_MIN, mget_keys_max, mset_keys_max, ttl_ms_max
from trimaran.services.kv_watch import SNAPSHOT_CHUNK_ITEMS, event_bytes


class Log:
    """A fake log: each ``apply`` is a new entry (index + 1) at the current log time, after
    ``on_time`` as the Replica does; queries see the last entry's index and time."""

    def __init__(self, svc: KvService, now_ms: int = 1_000) -> None:
        self.svc = svc
        self.index = 0
        self.now_ms = now_ms

    @property
    def ctx(self) -> ApplyContext:
        return ApplyContext(max(self.index, 1), self.now_ms)

    def entry(self, *commands: list[Any], at_ms: int | None = None) -> list[Any]:
        """One entry holding ``commands`` (none: a clock entry); each outcome, or the error raised."""
        self.index += 1
        if at_ms is not None:
            assert at_ms >= self.now_ms
            self.now_ms = at_ms
        ctx = ApplyContext(self.index, self.now_ms)
        self.svc.on_time(ctx)
        out: list[Any] = []
        for cmd in commands:
            try:
                out.append(self.svc.apply(cmd, ctx))
            except TrimaranError as exc:
                out.append(exc)
        return out

    def do(self, cmd: list[Any], at_ms: int | None = None) -> Any:
        """Apply one command in its own entry; raise what it raised."""
        (result,) = self.entry(cmd, at_ms=at_ms)
        if isinstance(result, TrimaranError):
            raise result
        return result

    def ask(self, query: list[Any]) -> Any:
        return self.svc.query(query, self.ctx)

    def get(self, key: bytes) -> Any:
        return self.ask(["get", key])


def digest(svc: KvService) -> str:
    return hashlib.sha256(pack(svc.snapshot())).hexdigest()


@pytest.fixture
def log() -> Log:
    return Log(KvService())


def test_kv_service_satisfies_the_service_protocol() -> None:
    svc: Service = KvService()
    assert svc.name == "kv"


# ---------------------------------------------------------------------------- set and get


def test_set_returns_the_entry_index_as_revision_and_get_reads_it(log: Log) -> None:
    assert log.do(["set", b"k", b"v"]) == 1
    assert log.get(b"k") == [b"v", 1, None]
    assert log.do(["set", b"k", b""]) == 2  # empty values are values
    assert log.get(b"k") == [b"", 2, None]


def test_get_of_a_missing_key_is_none(log: Log) -> None:
    assert log.get(b"nope") is None


def test_writes_in_one_entry_share_its_revision(log: Log) -> None:
    assert log.entry(["set", b"a", b"1"], ["set", b"b", b"2"], ["set", b"a", b"3"]) == [1, 1, 1]
    assert log.get(b"a") == [b"3", 1, None]


def test_options_given_as_none_mean_not_given(log: Log) -> None:
    log.do(["set", b"k", b"v", {"ttl_ms": None, "if_absent": None, "if_revision": None, "if_value": None}])
    assert log.get(b"k") == [b"v", 1, None]
    log.do(["set", b"k", b"w", None])  # so is an options map given as None
    assert log.ask(["scan", b"", None]) == {"items": [[b"k", b"w", 2, None]], "next": None, "revision": 2}


# ---------------------------------------------------------------------------- TTL


def test_ttl_counts_down_in_log_time_and_expires_at_the_exact_boundary(log: Log) -> None:
    log.do(["set", b"k", b"v", {"ttl_ms": 100}], at_ms=1_000)
    assert log.get(b"k") == [b"v", 1, 100]
    log.entry(at_ms=1_099)
    assert log.get(b"k") == [b"v", 1, 1]
    log.entry(at_ms=1_100)  # expires_at_ms = 1_100: gone at exactly that log time
    assert log.get(b"k") is None


def test_queries_hide_expired_keys_even_before_they_are_purged() -> None:
    svc = KvService()
    svc.apply(["set", b"k", b"v", {"ttl_ms": 10}], ApplyContext(1, 1_000))
    assert svc.query(["get", b"k"], ApplyContext(1, 1_009)) == [b"v", 1, 1]
    later = ApplyContext(1, 1_010)  # no on_time ran at 1_010: the key is still stored
    assert svc.query(["get", b"k"], later) is None
    assert svc.query(["mget", [b"k"]], later) == [None]
    assert svc.query(["scan", b""], later)["items"] == []


def test_expiry_purges_in_expiry_order_and_records_events_at_the_purging_entry(log: Log) -> None:
    log.entry(["set", b"b", b"1", {"ttl_ms": 10}], ["set", b"a", b"2", {"ttl_ms": 10}], ["set", b"c", b"3", {"ttl_ms": 5}])
    assert log.svc.next_deadline_ms() == 1_005
    log.entry(at_ms=1_050)  # a timestamp-only (clock) entry, index 2
    assert log.svc.next_deadline_ms() is None
    events = log.ask(["watch", b"", 1, {"prefix": True}])["events"]
    assert events == [
        [2, "delete", b"c", None, "expired"],
        [2, "delete", b"a", None, "expired"],  # same deadline: key order
        [2, "delete", b"b", None, "expired"],
    ]
    stats = log.ask(["stats"])
    assert (stats["keys"], stats["used_bytes"], stats["expired_keys_total"], stats["revision"]) == (0, 0, 3, 2)


def test_apply_purges_due_keys_itself_when_on_time_was_not_called() -> None:
    svc = KvService()
    svc.apply(["set", b"k", b"v", {"ttl_ms": 10}], ApplyContext(1, 1_000))
    # Without the purge, if_absent would see the expired key and fail.
    assert svc.apply(["set", b"k", b"w", {"if_absent": True}], ApplyContext(2, 1_010)) == 2


def test_set_replaces_the_ttl_and_without_ttl_makes_the_key_permanent(log: Log) -> None:
    log.do(["set", b"k", b"v", {"ttl_ms": 100}])
    log.do(["set", b"k", b"w", {"ttl_ms": 500}])
    assert log.get(b"k") == [b"w", 2, 500]
    assert log.svc.next_deadline_ms() == 1_500
    log.do(["set", b"k", b"x"])
    assert log.get(b"k") == [b"x", 3, None]
    assert log.svc.next_deadline_ms() is None


def test_expire_sets_and_removes_a_ttl_without_changing_the_revision(log: Log) -> None:
    log.do(["set", b"k", b"v"])
    assert log.do(["expire", b"k", 50], at_ms=1_010) is True
    assert log.get(b"k") == [b"v", 1, 50]
    assert log.svc.next_deadline_ms() == 1_060
    assert log.do(["expire", b"k", None]) is True
    assert log.get(b"k") == [b"v", 1, None]
    assert log.svc.next_deadline_ms() is None
    assert log.do(["expire", b"missing", 10]) is False
    assert log.ask(["stats"])["revision"] == 1, "expire makes no event"


def test_expire_then_expiry(log: Log) -> None:
    log.do(["set", b"k", b"v", {"ttl_ms": 1_000}])
    log.do(["expire", b"k", 10])
    log.entry(at_ms=1_010)
    assert log.get(b"k") is None


# ---------------------------------------------------------------------------- conditions


def test_if_absent_writes_only_a_missing_key(log: Log) -> None:
    assert log.do(["set", b"k", b"v", {"if_absent": True}]) == 1
    with pytest.raises(ConditionFailed) as info:
        log.do(["set", b"k", b"w", {"if_absent": True}])
    assert info.value.details == {"key": b"k", "revision": 1}
    assert log.get(b"k") == [b"v", 1, None]


def test_if_revision_is_compare_and_swap(log: Log) -> None:
    log.do(["set", b"k", b"v"])
    assert log.do(["set", b"k", b"w", {"if_revision": 1}]) == 2
    with pytest.raises(ConditionFailed) as info:
        log.do(["set", b"k", b"x", {"if_revision": 1}])
    assert info.value.details["revision"] == 2
    assert log.get(b"k") == [b"w", 2, None]


def test_if_revision_zero_means_absent(log: Log) -> None:
    assert log.do(["set", b"k", b"v", {"if_revision": 0}]) == 1
    with pytest.raises(ConditionFailed):
        log.do(["set", b"k", b"w", {"if_revision": 0}])


def test_if_value_compares_the_current_value(log: Log) -> None:
    with pytest.raises(ConditionFailed) as info:
        log.do(["set", b"k", b"v", {"if_value": b""}])  # absent is not the empty value
    assert info.value.details["revision"] == 0
    log.do(["set", b"k", b"v"])
    assert log.do(["set", b"k", b"w", {"if_value": b"v"}]) == 3
    with pytest.raises(ConditionFailed):
        log.do(["set", b"k", b"x", {"if_value": b"v"}])


def test_all_given_conditions_must_hold(log: Log) -> None:
    log.do(["set", b"k", b"v"])
    with pytest.raises(ConditionFailed):
        log.do(["set", b"k", b"w", {"if_revision": 1, "if_value": b"other"}])
    assert log.do(["set", b"k", b"w", {"if_revision": 1, "if_value": b"v"}]) == 3


def test_a_failed_condition_does_not_count_as_use_for_lru() -> None:
    log = Log(KvService(maxmemory_bytes=2 * entry_bytes(b"a", b"1")))
    log.do(["set", b"a", b"1"])
    log.do(["set", b"b", b"1"])
    with pytest.raises(ConditionFailed):
        log.do(["set", b"a", b"2", {"if_absent": True}])
    log.do(["set", b"c", b"1"])  # evicts the least recently used: still a
    assert log.get(b"a") is None and log.get(b"b") is not None


# ---------------------------------------------------------------------------- delete


def test_delete_says_whether_the_key_existed(log: Log) -> None:
    log.do(["set", b"k", b"v"])
    assert log.do(["delete", b"k"]) is True
    assert log.get(b"k") is None
    assert log.do(["delete", b"k"]) is False
    assert log.ask(["watch", b"k", 0])["events"][-1] == [2, "delete", b"k", None, "deleted"]


def test_conditional_delete(log: Log) -> None:
    log.do(["set", b"k", b"v"])
    with pytest.raises(ConditionFailed):
        log.do(["delete", b"k", {"if_revision": 7}])
    with pytest.raises(ConditionFailed):
        log.do(["delete", b"k", {"if_value": b"w"}])
    assert log.get(b"k") == [b"v", 1, None]
    assert log.do(["delete", b"k", {"if_revision": 1, "if_value": b"v"}]) is True
    assert log.do(["delete", b"k", {"if_revision": 0}]) is False  # absent, as required


def test_delete_refuses_if_absent(log: Log) -> None:
    with pytest.raises(InvalidArgument, match="unknown option"):
        log.do(["delete", b"k", {"if_absent": True}])


# ---------------------------------------------------------------------------- incr and decr


def test_incr_and_decr_store_decimal_ascii_and_return_value_and_revision(log: Log) -> None:
    assert log.do(["incr", b"n", 5]) == [5, 1]
    assert log.get(b"n") == [b"5", 1, None]
    assert log.do(["decr", b"n", 7]) == [-2, 2]
    assert log.get(b"n") == [b"-2", 2, None]
    log.do(["set", b"n", b"40"])
    assert log.do(["incr", b"n", 2]) == [42, 4]


def test_incr_keeps_the_ttl(log: Log) -> None:
    log.do(["set", b"n", b"1", {"ttl_ms": 100}], at_ms=1_000)
    log.do(["incr", b"n", 1], at_ms=1_040)
    assert log.get(b"n") == [b"2", 2, 60]


@pytest.mark.parametrize("value", [b"x", b"", b"1.5", b"+1", b"01", b" 1", b"1 ", b"-0", b"1_0", b"\xd9\xa1", b"9223372036854775808"])
def test_incr_of_a_value_that_is_not_a_canonical_int64_is_invalid(log: Log, value: bytes) -> None:
    log.do(["set", b"n", value])
    before = digest(log.svc)
    with pytest.raises(InvalidArgument, match="int64"):
        log.do(["incr", b"n", 1])
    assert digest(log.svc) == before


def test_incr_bounds_are_int64(log: Log) -> None:
    assert log.do(["incr", b"n", INT64_MAX]) == [INT64_MAX, 1]
    with pytest.raises(InvalidArgument, match="overflows"):
        log.do(["incr", b"n", 1])
    assert log.do(["decr", b"m", INT64_MAX]) == [-INT64_MAX, 3]
    assert log.do(["decr", b"m", 1]) == [INT64_MIN, 4]
    with pytest.raises(InvalidArgument, match="overflows"):
        log.do(["decr", b"m", 1])
    with pytest.raises(InvalidArgument, match="overflows"):
        log.do(["decr", b"zero", INT64_MIN])  # 0 - (-2**63) = 2**63
    assert log.get(b"n") == [str(INT64_MAX).encode(), 1, None]


# ---------------------------------------------------------------------------- mset


def test_mset_writes_all_pairs_at_one_revision(log: Log) -> None:
    assert log.do(["mset", [[b"a", b"1"], [b"b", b"2", 50]]]) == 1
    assert log.ask(["mget", [b"a", b"b", b"c"]]) == [[b"1", 1, None], [b"2", 1, 50], None]


@pytest.mark.parametrize(
    "pairs, error",
    [
        ([], InvalidArgument),
        ([[b"a", b"1"], [b"a", b"2"]], InvalidArgument),  # the same key twice
        ([[b"a", b"1"], [b"", b"2"]], InvalidArgument),
        ([[b"a", b"1"], [b"b", b"2", -1]], InvalidArgument),
        ([[b"a", b"1"], [b"b"]], InvalidArgument),
        ([[b"a", b"1"], (b"b", b"2")], InvalidArgument),
        ([[b"a", b"1"], [b"b", b"v" * (limits.value_bytes_max + 1)]], TooLarge),
        ([[b"k%d" % i, b""] for i in range(mset_keys_max + 1)], TooLarge),
    ],
)
def test_mset_is_all_or_nothing_on_bad_input(log: Log, pairs: list[Any], error: type[Exception]) -> None:
    log.do(["set", b"a", b"0"])
    before = digest(log.svc)
    with pytest.raises(error):
        log.do(["mset", pairs])
    assert digest(log.svc) == before


# ---------------------------------------------------------------------------- touch


def test_touch_says_whether_the_key_exists_and_changes_no_revision(log: Log) -> None:
    log.do(["set", b"k", b"v"])
    assert log.do(["touch", b"k"]) is True
    assert log.do(["touch", b"other"]) is False
    assert log.get(b"k") == [b"v", 1, None]


# ---------------------------------------------------------------------------- bad input


BAD_COMMANDS: list[tuple[Any, type[Exception]]] = [
    (None, InvalidArgument),
    ([], InvalidArgument),
    ("set", InvalidArgument),
    ([b"set", b"k", b"v"], InvalidArgument),
    (["frobnicate", b"k"], InvalidArgument),
    (["get", b"k"], InvalidArgument),  # a query is not a command
    (["set"], InvalidArgument),
    (["set", b"k"], InvalidArgument),
    (["set", b"k", b"v", {}, 1], InvalidArgument),
    (["set", b"k", b"v", 5], InvalidArgument),
    (["set", b"", b"v"], InvalidArgument),
    (["set", "k", b"v"], InvalidArgument),
    (["set", bytearray(b"k"), b"v"], InvalidArgument),
    (["set", b"k", "v"], InvalidArgument),
    (["set", b"k", None], InvalidArgument),
    (["set", b"k" * (limits.key_bytes_max + 1), b"v"], TooLarge),
    (["set", b"k", b"v" * (limits.value_bytes_max + 1)], TooLarge),
    (["set", b"k", b"v", {"ttl_ms": -1}], InvalidArgument),
    (["set", b"k", b"v", {"ttl_ms": 0}], InvalidArgument),
    (["set", b"k", b"v", {"ttl_ms": 1.5}], InvalidArgument),
    (["set", b"k", b"v", {"ttl_ms": float("nan")}], InvalidArgument),
    (["set", b"k", b"v", {"ttl_ms": float("inf")}], InvalidArgument),
    (["set", b"k", b"v", {"ttl_ms": True}], InvalidArgument),
    (["set", b"k", b"v", {"ttl_ms": "5"}], InvalidArgument),
    (["set", b"k", b"v", {"ttl_ms": ttl_ms_max + 1}], InvalidArgument),
    (["set", b"k", b"v", {"ttl": 5}], InvalidArgument),
    (["set", b"k", b"v", {"if_revision": -1}], InvalidArgument),
    (["set", b"k", b"v", {"if_revision": True}], InvalidArgument),
    (["set", b"k", b"v", {"if_revision": 1 << 63}], InvalidArgument),
    (["set", b"k", b"v", {"if_absent": 1}], InvalidArgument),
    (["set", b"k", b"v", {"if_value": "v"}], InvalidArgument),
    (["set", b"k", b"v", {"if_value": b"v" * (limits.value_bytes_max + 1)}], TooLarge),
    (["delete"], InvalidArgument),
    (["delete", b""], InvalidArgument),
    (["incr", b"n"], InvalidArgument),
    (["incr", b"n", True], InvalidArgument),
    (["incr", b"n", 1.0], InvalidArgument),
    (["incr", b"n", 1 << 63], InvalidArgument),
    (["decr", b"n", -(1 << 63) - 1], InvalidArgument),
    (["mset", b"k"], InvalidArgument),
    (["mset", [[b"k", b"v"]], {"ttl_ms": 5}], InvalidArgument),  # mset takes no options
    (["touch", b""], InvalidArgument),
    (["expire", b"k"], InvalidArgument),
    (["expire", b"k", -5], InvalidArgument),
    (["expire", b"k", 2.0], InvalidArgument),
]


@pytest.mark.parametrize("command, error", BAD_COMMANDS)
def test_bad_commands_are_typed_errors_and_change_nothing(command: Any, error: type[Exception]) -> None:
    log = Log(KvService())
    log.do(["set", b"k", b"1", {"ttl_ms": 10_000}])
    log.do(["set", b"n", b"1"])
    before = digest(log.svc)
    with pytest.raises(error) as info:
        log.do(command)
    assert type(info.value) is error
    assert digest(log.svc) == before


BAD_QUERIES: list[tuple[Any, type[Exception]]] = [
    (None, InvalidArgument),
    (["set", b"k", b"v"], InvalidArgument),  # a command is not a query
    (["get"], InvalidArgument),
    (["get", b""], InvalidArgument),
    (["get", "k"], InvalidArgument),
    (["get", b"k" * (limits.key_bytes_max + 1)], TooLarge),
    (["mget", b"k"], InvalidArgument),
    (["mget", [b"k", 1]], InvalidArgument),
    (["mget", [b"k%d" % i for i in range(mget_keys_max + 1)]], TooLarge),
    (["scan", "a"], InvalidArgument),
    (["scan", b"a", {"limit": 0}], InvalidArgument),
    (["scan", b"a", {"limit": True}], InvalidArgument),
    (["scan", b"a", {"start_after": b""}], InvalidArgument),
    (["scan", b"a", {"cursor": b"x"}], InvalidArgument),
    (["watch", b"k"], InvalidArgument),
    (["watch", b"k", -1], InvalidArgument),
    (["watch", b"", 0], InvalidArgument),  # an empty key (an empty prefix needs prefix=True)
    (["watch", b"k", 0, {"prefix": "yes"}], InvalidArgument),
    (["watch", b"k", 0, {"limit": 0}], InvalidArgument),
    (["stats", 1], InvalidArgument),
]


@pytest.mark.parametrize("query, error", BAD_QUERIES)
def test_bad_queries_are_typed_errors(query: Any, error: type[Exception]) -> None:
    with pytest.raises(error) as info:
        KvService().query(query, ApplyContext(1, 0))
    assert type(info.value) is error


def test_errors_survive_the_wire(log: Log) -> None:
    log.do(["set", b"k", b"v"])
    with pytest.raises(ConditionFailed) as info:
        log.do(["set", b"k", b"w", {"if_absent": True}])
    wire = unpack(pack(info.value.to_wire()))
    assert wire == {"code": "condition_failed", "message": info.value.message, "details": {"key": b"k", "revision": 1}}


# ---------------------------------------------------------------------------- queries


def test_queries_change_nothing(log: Log) -> None:
    log.entry(["set", b"a", b"1", {"ttl_ms": 5}], ["set", b"b", b"2"])
    before = digest(log.svc)
    for q in (["get", b"a"], ["mget", [b"a", b"b"]], ["scan", b""], ["watch", b"a", 0], ["stats"]):
        log.svc.query(q, ApplyContext(1, 2_000))  # even at a time past a's expiry
    assert digest(log.svc) == before


def test_mget_answers_in_the_order_asked(log: Log) -> None:
    log.entry(["set", b"a", b"1"], ["set", b"b", b"2"])
    assert log.ask(["mget", [b"b", b"x", b"a", b"b"]]) == [[b"2", 1, None], None, [b"1", 1, None], [b"2", 1, None]]
    assert log.ask(["mget", []]) == []


def test_mget_over_the_result_budget_is_too_large() -> None:
    log = Log(KvService(query_result_bytes_max=limits.value_bytes_max))
    big = b"v" * (limits.value_bytes_max // 2 + 1)
    log.entry(["set", b"a", big], ["set", b"b", big])
    assert log.ask(["mget", [b"a"]]) == [[big, 1, None]]
    with pytest.raises(TooLarge):
        log.ask(["mget", [b"a", b"b"]])


def test_scan_pages_through_a_prefix_in_key_order(log: Log) -> None:
    log.entry(*[["set", k, b"v"] for k in (b"b2", b"a", b"b1", b"b3", b"c", b"b")])
    page = log.ask(["scan", b"b", {"limit": 2}])
    assert [i[0] for i in page["items"]] == [b"b", b"b1"] and page["next"] == b"b1" and page["revision"] == 1
    page = log.ask(["scan", b"b", {"limit": 2, "start_after": page["next"]}])
    assert [i[0] for i in page["items"]] == [b"b2", b"b3"]
    assert page["next"] is None, "no further key: the last page says so"
    assert log.ask(["scan", b"b", {"start_after": b"b3"}]) == {"items": [], "next": None, "revision": 1}
    assert log.ask(["scan", b"b", {"start_after": b"a"}])["items"][0][0] == b"b"  # before the prefix
    assert [i[0] for i in log.ask(["scan", b""])["items"]] == [b"a", b"b", b"b1", b"b2", b"b3", b"c"]
    assert log.ask(["scan", b"b"])["items"][0] == [b"b", b"v", 1, None]


def test_scan_limit_is_clamped_to_scan_limit_max() -> None:
    log = Log(KvService(scan_limit_max=3))
    log.entry(*[["set", b"k%d" % i, b"v"] for i in range(5)])
    page = log.ask(["scan", b"k", {"limit": 100}])
    assert len(page["items"]) == 3 and page["next"] == b"k2"


def test_scan_pages_stop_at_the_result_budget() -> None:
    log = Log(KvService(query_result_bytes_max=limits.value_bytes_max))
    big = b"v" * (limits.value_bytes_max // 2)
    log.entry(["set", b"a", big], ["set", b"b", big], ["set", b"c", big])
    first = log.ask(["scan", b""])
    assert [i[0] for i in first["items"]] == [b"a", b"b"] and first["next"] == b"b"
    assert [i[0] for i in log.ask(["scan", b"", {"start_after": b"b"}])["items"]] == [b"c"]


def test_stats(log: Log) -> None:
    log.do(["set", b"k", b"vv", {"ttl_ms": 30}])
    assert log.ask(["stats"]) == {
        "keys": 1,
        "used_bytes": 1 + 2 + ENTRY_OVERHEAD_BYTES,
        "maxmemory_bytes": None,
        "eviction_policy": "lru",
        "revision": 1,
        "compacted_revision": 0,
        "watch_events": 1,
        "expired_keys_total": 0,
        "evicted_keys_total": 0,
        "next_expiry_ms": 1_030,
    }


# ---------------------------------------------------------------------------- watch


def test_watch_a_key_or_a_prefix_from_a_revision(log: Log) -> None:
    log.do(["set", b"a", b"1"])
    log.do(["set", b"ab", b"2"])
    log.do(["incr", b"a", 1])
    log.do(["delete", b"ab"])
    assert log.ask(["watch", b"a", 0]) == {
        "events": [[1, "put", b"a", b"1", None], [3, "put", b"a", b"2", None]],
        "next": 4,
        "revision": 4,
    }
    assert log.ask(["watch", b"a", 1, {"prefix": True}])["events"] == [
        [2, "put", b"ab", b"2", None],
        [3, "put", b"a", b"2", None],
        [4, "delete", b"ab", None, "deleted"],
    ]
    assert log.ask(["watch", b"zz", 0]) == {"events": [], "next": 4, "revision": 4}
    assert log.ask(["watch", b"a", 9]) == {"events": [], "next": 9, "revision": 4}  # never backwards


def test_watch_pages_end_at_revision_boundaries(log: Log) -> None:
    log.entry(["set", b"a", b"1"], ["set", b"b", b"1"], ["set", b"c", b"1"])  # revision 1
    log.do(["set", b"d", b"1"])  # revision 2
    page = log.ask(["watch", b"", 0, {"prefix": True, "limit": 2}])
    assert [e[0] for e in page["events"]] == [1, 1, 1] and page["next"] == 1, "revision 1 stays whole"
    page = log.ask(["watch", b"", page["next"], {"prefix": True, "limit": 2}])
    assert [e[2] for e in page["events"]] == [b"d"] and page["next"] == 2


def test_watch_limit_is_clamped_to_watch_limit_max() -> None:
    log = Log(KvService(watch_limit_max=2))
    for i in range(4):
        log.do(["set", b"k", b"%d" % i])
    page = log.ask(["watch", b"k", 0, {"limit": 50}])
    assert len(page["events"]) == 2 and page["next"] == 2


def test_watch_from_a_compacted_revision_names_the_oldest_available() -> None:
    log = Log(KvService(watch_history_max=3))
    for i in range(5):
        log.do(["set", b"k", b"%d" % i])  # revisions 1..5; the window keeps 3, 4, 5
    with pytest.raises(RevisionCompacted) as info:
        log.ask(["watch", b"k", 1])
    assert info.value.details == {"oldest_revision": 2, "current_revision": 5}
    assert [e[0] for e in log.ask(["watch", b"k", 2])["events"]] == [3, 4, 5]
    assert log.ask(["stats"])["compacted_revision"] == 2


def test_a_revision_cut_by_the_window_is_compacted_as_a_whole() -> None:
    log = Log(KvService(watch_history_max=2))
    log.do(["set", b"x", b"0"])
    log.entry(["set", b"a", b"1"], ["set", b"b", b"1"], ["set", b"c", b"1"])  # revision 2, 3 events
    with pytest.raises(RevisionCompacted) as info:
        log.ask(["watch", b"", 1, {"prefix": True}])
    assert info.value.details["oldest_revision"] == 2
    assert log.ask(["watch", b"", 2, {"prefix": True}])["events"] == []


def test_the_window_is_bounded_in_bytes() -> None:
    minimum = event_bytes(b"k" * limits.key_bytes_max, b"v" * limits.value_bytes_max)
    log = Log(KvService(watch_history_bytes_max=minimum))
    big = b"v" * (limits.value_bytes_max // 2)
    for i in range(3):
        log.do(["set", b"k%d" % i, big])
    stats = log.ask(["stats"])
    assert stats["watch_events"] == 2 and stats["compacted_revision"] == 1


def test_watch_sees_expiries_and_evictions() -> None:
    log = Log(KvService(maxmemory_bytes=2 * entry_bytes(b"a", b"1")))
    log.do(["set", b"a", b"1", {"ttl_ms": 10}])
    log.do(["set", b"b", b"1"])
    log.do(["set", b"c", b"1"])  # evicts a (least recently used)
    log.do(["set", b"d", b"1", {"ttl_ms": 5}], at_ms=1_001)  # evicts b
    log.entry(at_ms=1_006)  # d expires
    assert [e[1:] for e in log.ask(["watch", b"", 0, {"prefix": True}])["events"]][2:] == [
        ["put", b"c", b"1", None],
        ["delete", b"a", None, "evicted"],
        ["put", b"d", b"1", None],
        ["delete", b"b", None, "evicted"],
        ["delete", b"d", None, "expired"],
    ]


# ---------------------------------------------------------------------------- memory and eviction


def test_noeviction_refuses_writes_over_maxmemory_and_changes_nothing() -> None:
    log = Log(KvService(maxmemory_bytes=2 * entry_bytes(b"a", b"1"), eviction_policy="noeviction"))
    log.do(["set", b"a", b"1"])
    log.do(["set", b"b", b"1"])
    before = digest(log.svc)
    for cmd in (["set", b"c", b"1"], ["set", b"a", b"12"], ["incr", b"a", 9], ["mset", [[b"a", b"2"], [b"c", b"3"]]]):
        with pytest.raises(OutOfMemory) as info:
            log.do(cmd)
        assert digest(log.svc) == before
    assert info.value.details["maxmemory_bytes"] == 2 * entry_bytes(b"a", b"1")
    assert log.do(["set", b"a", b"2"]) == 7, "a write of the same size fits"
    assert log.do(["delete", b"a"]) is True, "deletes always work"
    assert log.do(["set", b"c", b"1"]) == 9


def test_lru_evicts_least_recently_written_or_touched_keys() -> None:
    log = Log(KvService(maxmemory_bytes=3 * entry_bytes(b"a", b"1")))
    for k in (b"a", b"b", b"c"):
        log.do(["set", k, b"1"])
    log.do(["touch", b"a"])  # order now b, c, a
    log.do(["set", b"d", b"1"])
    assert log.get(b"b") is None
    log.do(["incr", b"c", 1])  # order a, d, c
    log.do(["set", b"e", b"1"])
    assert [i[0] for i in log.ask(["scan", b""])["items"]] == [b"c", b"d", b"e"]
    assert log.ask(["stats"])["evicted_keys_total"] == 2


def test_lru_evicts_as_many_keys_as_one_big_write_needs_but_never_its_own() -> None:
    small = entry_bytes(b"a", b"1")
    log = Log(KvService(maxmemory_bytes=4 * small))
    for k in (b"a", b"b", b"c", b"d"):
        log.do(["set", k, b"1"])
    log.do(["mset", [[b"x", b"1" * (small - 1)], [b"d", b"1"]]])  # x needs two slots; d is written
    assert [i[0] for i in log.ask(["scan", b""])["items"]] == [b"c", b"d", b"x"]
    assert log.ask(["stats"])["used_bytes"] <= 4 * small


def test_a_write_that_cannot_fit_even_alone_is_out_of_memory_under_lru() -> None:
    log = Log(KvService(maxmemory_bytes=entry_bytes(b"a", b"1")))
    log.do(["set", b"a", b"1"])
    before = digest(log.svc)
    with pytest.raises(OutOfMemory):
        log.do(["set", b"b", b"12"])
    with pytest.raises(OutOfMemory):
        log.do(["mset", [[b"b", b"1"], [b"c", b"1"]]])
    assert digest(log.svc) == before, "nothing evicted for a write that fails"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"maxmemory_bytes": 0},
        {"maxmemory_bytes": 1.5},
        {"eviction_policy": "random"},
        {"watch_history_max": 0},
        {"watch_history_bytes_max": 1_000},
        {"watch_history_bytes_max": limits.frame_bytes_max},
        {"scan_limit_max": 0},
        {"watch_limit_max": 0},
        {"query_result_bytes_max": 10},
    ],
)
def test_bad_configuration_is_a_config_error(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        KvService(**kwargs)


# ---------------------------------------------------------------------------- snapshots


def test_snapshot_restore_is_identical_and_independent(log: Log) -> None:
    log.entry(["set", b"a", b"1", {"ttl_ms": 50}], ["set", b"b", b"2"], ["incr", b"n", 3])
    log.do(["touch", b"a"])
    log.do(["delete", b"b"])
    snap = log.svc.snapshot()
    other = KvService()
    other.restore(unpack(pack(snap)))
    assert digest(other) == digest(log.svc)
    assert other.query(["stats"], log.ctx) == log.ask(["stats"])
    assert other.next_deadline_ms() == 1_050
    log.do(["set", b"c", b"3"])
    assert digest(other) != digest(log.svc), "the restored copy shares no mutable state"
    other.apply(["set", b"c", b"3"], log.ctx)
    assert digest(other) == digest(log.svc)


def test_restore_replaces_the_whole_state(log: Log) -> None:
    log.do(["set", b"a", b"1"])
    log.svc.restore(KvService().snapshot())
    assert log.get(b"a") is None and log.ask(["stats"])["revision"] == 0


def test_restore_refuses_something_else() -> None:
    with pytest.raises(ValueError):
        KvService().restore({"format": 99})


def test_large_snapshots_are_chunked_within_the_codec_limits() -> None:
    svc = KvService()
    count = SNAPSHOT_CHUNK_ITEMS + 10
    svc.apply(["mset", [[b"k%06d" % i, b"v"] for i in range(mset_keys_max)]], ApplyContext(1, 0))
    for start in range(mset_keys_max, count, mset_keys_max):
        pairs = [[b"k%06d" % i, b"v", 1_000] for i in range(start, min(count, start + mset_keys_max))]
        svc.apply(["mset", pairs], ApplyContext(2, 0))
    data = pack(svc.snapshot())
    other = KvService()
    other.restore(unpack(data, size_bytes_max=len(data)))  # what the Replica does: codec limits apply
    assert pack(other.snapshot()) == data
    assert other.query(["stats"], ApplyContext(2, 0))["keys"] == count


# ---------------------------------------------------------------------------- txn


def test_txn_applies_its_steps_in_order_at_one_revision_with_a_result_each(log: Log) -> None:
    log.do(["set", b"s", b"text"])
    results = log.do(["txn", [["set", b"a", b"1"], ["incr", b"a", 5], ["get", b"a"], ["incr", b"s", 1], ["mget", [b"a", b"s"]]]])
    assert results[0] == [True, 2] and results[1] == [True, [6, 2]] and results[2] == [True, [b"6", 2, None]]
    ok, error = results[3]
    assert not ok and error["code"] == "invalid_argument"  # this step alone failed, changing nothing
    assert results[4] == [True, [[b"6", 2, None], [b"text", 1, None]]]
    assert log.get(b"s") == [b"text", 1, None]


def test_txn_if_revisions_are_all_or_nothing(log: Log) -> None:
    log.do(["set", b"w", b"1"])  # revision 1
    with pytest.raises(ConditionFailed) as caught:
        log.do(["txn", [["set", b"x", b"1"]], {"if_revisions": [[b"w", 1], [b"absent", 1]]}])
    assert caught.value.details == {"key": b"absent", "revision": 0}
    assert log.get(b"x") is None
    assert log.do(["txn", [["set", b"x", b"1"]], {"if_revisions": [[b"w", 1], [b"absent", 0]]}]) == [[True, 3]]
    log.do(["set", b"t", b"v", {"ttl_ms": 5}])  # revision 4
    with pytest.raises(ConditionFailed):  # expired: absent, whatever revision it had
        log.entry(at_ms=log.now_ms + 5)
        log.do(["txn", [], {"if_revisions": [[b"t", 4]]}])


def test_the_redis_shaped_writes_if_exists_keep_ttl_append_and_mset_if_absent(log: Log) -> None:
    with pytest.raises(ConditionFailed):
        log.do(["set", b"a", b"1", {"if_exists": True}])  # SET XX of a missing key
    assert log.get(b"a") is None
    log.do(["set", b"a", b"1", {"ttl_ms": 100}])  # revision 2, expires at 1100
    assert log.do(["set", b"a", b"2", {"if_exists": True, "keep_ttl": True}]) == 3
    assert log.get(b"a") == [b"2", 3, 100] and log.ask(["mget", [b"a", b"z"], {"expires_at": True}]) == [[b"2", 3, 100, 1_100], None]
    assert log.do(["append", b"a", b"34"]) == 3 and log.get(b"a") == [b"234", 4, 100]  # the expiry kept
    assert log.do(["append", b"new", b"x"]) == 1 and log.get(b"new") == [b"x", 5, None]
    with pytest.raises(InvalidArgument):
        log.do(["set", b"a", b"1", {"ttl_ms": 5, "keep_ttl": True}])
    with pytest.raises(ConditionFailed) as caught:  # MSETNX: one key exists, nothing written
        log.do(["mset", [[b"m", b"1"], [b"new", b"2"]], {"if_absent": True}])
    assert caught.value.details == {"key": b"new", "revision": 5} and log.get(b"m") is None
    assert log.do(["mset", [[b"m", b"1"], [b"n", b"2"]], {"if_absent": True}]) == 8


def test_txn_if_expiries_fail_when_an_expiry_moved(log: Log) -> None:
    log.do(["set", b"w", b"1"])  # revision 1, no expiry
    watched = {"if_revisions": [[b"w", 1]], "if_expiries": [[b"w", 0]]}
    log.do(["expire", b"w", 50])  # the revision stays; the expiry moves
    with pytest.raises(ConditionFailed):
        log.do(["txn", [["set", b"x", b"1"]], watched])
    assert log.get(b"x") is None
    log.do(["expire", b"w", None])
    assert log.do(["txn", [["set", b"x", b"1"]], watched]) == [[True, 5]]
    with pytest.raises(InvalidArgument):  # an expiry condition needs the key's revision condition
        log.do(["txn", [], {"if_expiries": [[b"w", 0]]}])


@pytest.mark.parametrize(
    "txn, error",
    [
        (["txn", [["set", b"a", b"1"], ["set", b"a"]]], InvalidArgument),  # one malformed step
        (["txn", [["txn", []]]], InvalidArgument),  # no nesting
        (["txn", [["scan", b""]]], InvalidArgument),  # only get and mget among queries
        (["txn", "steps"], InvalidArgument),
        (["txn", [], {"if_revisions": [[b"a", -1]]}], InvalidArgument),
        (["txn", [["set", b"a", b"1"]] * 1001], TooLarge),
    ],
)
def test_txn_refuses_a_malformed_step_before_applying_any(log: Log, txn: list[Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        log.do(txn)
    assert log.get(b"a") is None
