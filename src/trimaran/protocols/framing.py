"""Sans-IO length-prefixed framing (h11 style): feed bytes in, take whole frames out.

A frame is a 4-byte big-endian length followed by that many bytes of msgpack. The length is
checked against the limit as soon as the header arrives, before any body is buffered, so a peer
announcing a huge frame costs nothing but a typed error and a closed connection.
"""

from __future__ import annotations

from trimaran import limits
from trimaran.errors import FrameTooLarge, ProtocolError

_HEADER = limits.frame_header_bytes


def encode_frame(payload: bytes, frame_bytes_max: int = limits.frame_bytes_max) -> bytes:
    if len(payload) > frame_bytes_max:
        raise FrameTooLarge(f"frame of {len(payload)} bytes is over frame_bytes_max={frame_bytes_max}")
    return len(payload).to_bytes(_HEADER, "big") + payload


class FrameDecoder:
    """Accumulates received bytes; :meth:`next_frame` returns complete frames in order."""

    def __init__(self, frame_bytes_max: int = limits.frame_bytes_max) -> None:
        assert 0 < frame_bytes_max <= limits.frame_bytes_max
        self.frame_bytes_max = frame_bytes_max
        self._buffer = bytearray()
        self._need: int | None = None  # body length of the frame being read, once its header is in
        self.closed = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Add received bytes (b"" means the peer closed the stream)."""
        if not data:
            self.closed = True
            return
        self._buffer += data

    def next_frame(self) -> bytes | None:
        """The next complete frame, or None until more bytes arrive.

        Raises ``FrameTooLarge`` on an oversized length and ``ProtocolError`` if the stream closed
        in the middle of a frame.
        """
        if self._need is None:
            if len(self._buffer) < _HEADER:
                if self.closed and self._buffer:
                    raise ProtocolError("connection closed inside a frame header")
                return None
            need = int.from_bytes(self._buffer[:_HEADER], "big")
            if need > self.frame_bytes_max:
                raise FrameTooLarge(f"peer announced a {need}-byte frame; frame_bytes_max={self.frame_bytes_max}")
            del self._buffer[:_HEADER]
            self._need = need
        if len(self._buffer) < self._need:
            if self.closed:
                raise ProtocolError("connection closed inside a frame")
            return None
        frame = bytes(self._buffer[: self._need])
        del self._buffer[: self._need]
        self._need = None
        return frame

    @property
    def buffered_bytes(self) -> int:
        return len(self._buffer)
