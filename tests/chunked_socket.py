"""A stand-in socket that hands out a server's reply in given pieces, for the stores' reply parsers."""

from __future__ import annotations


class ChunkedSocket:
    """A socket whose reads hand out a reply in the given pieces; then the end of the stream."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)
        self.sent = b""

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def setsockopt(self, *option) -> None:  # kernel timeouts: nothing to do here
        pass

    def settimeout(self, timeout) -> None:
        pass

    def recv(self, size: int) -> bytes:
        return self._take(size)

    def recv_into(self, view) -> int:
        piece = self._take(len(view))
        view[: len(piece)] = piece
        return len(piece)

    def _take(self, size: int) -> bytes:
        if not self.pieces:
            return b""
        piece = self.pieces.pop(0)
        if len(piece) > size:
            self.pieces.insert(0, piece[size:])
            piece = piece[:size]
        return piece


def every_split(reply: bytes):
    """The reply whole, byte by byte, and cut in two at every offset."""
    yield [reply]
    yield [reply[i:i + 1] for i in range(len(reply))]
    for i in range(1, len(reply)):
        yield [reply[:i], reply[i:]]
