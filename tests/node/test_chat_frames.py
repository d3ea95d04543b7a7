"""Server frames of the chat gateway carry one or more JSON objects, newline-delimited: what the
gateway's writer takes from a connection's queue (``take_frame``) and what readers split
(``frame_objects``) give back the queued pushes, in order, each once, within the frame bound."""

from __future__ import annotations

import json
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trimaran.client.chat import frame_objects
from trimaran.errors import InvalidArgument
from trimaran.node.http.chat_gateway import take_frame

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(),  # text: newlines, quotes, any code point
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_pushes = st.lists(st.dictionaries(st.text(max_size=8), _json_values, max_size=4), max_size=30)


@given(_pushes, st.integers(min_value=1, max_value=400))
def test_frames_give_back_every_push_in_order_within_the_bound(pushes: list[dict[str, object]], bytes_max: int) -> None:
    texts = [json.dumps(p, separators=(",", ":")) for p in pushes]
    queue = deque(texts)
    taken: list[dict[str, object]] = []
    taken_bytes = 0
    for _ in range(len(texts)):  # each frame takes at least one push
        if not queue:
            break
        first = queue[0]
        text, size = take_frame(queue, bytes_max)
        objects = frame_objects(text)
        assert len(objects) == 1 or len(text) <= bytes_max  # only a lone push may exceed the bound
        if len(first) > bytes_max or len(objects) == 1:
            assert text == first
        taken += objects
        taken_bytes += size
    assert not queue
    assert taken == pushes
    assert taken_bytes == sum(len(t) for t in texts)  # the connection's queued bytes stay exact


def test_a_lone_push_goes_alone_and_a_queue_goes_together() -> None:
    queue = deque(['{"type":"message","offset":1}'])
    assert take_frame(queue, 1024) == ('{"type":"message","offset":1}', 29)
    queue = deque(['{"a":1}', '{"b":"x\\ny"}', '{"c":3}'])
    text, size = take_frame(queue, 1024)
    assert text == '{"a":1}\n{"b":"x\\ny"}\n{"c":3}' and size == 7 + 12 + 7 and not queue
    assert frame_objects(text.encode()) == [{"a": 1}, {"b": "x\ny"}, {"c": 3}]
    queue = deque(['{"a":1}', '{"b":2}', '{"c":3}'])
    assert take_frame(queue, 15) == ('{"a":1}\n{"b":2}', 14) and list(queue) == ['{"c":3}']
    queue = deque(['{"a":1}', '{"b":2}'])  # together they are 15 bytes with the newline: over 14
    assert take_frame(queue, 14) == ('{"a":1}', 7) and list(queue) == ['{"b":2}']


def test_a_frame_that_is_not_json_objects_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        frame_objects('{"a":1}\n[1]')
    with pytest.raises(ValueError):
        frame_objects('{"a":1}\n{not json')
