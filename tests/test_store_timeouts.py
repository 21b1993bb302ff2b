"""Network stores' sockets time out in the kernel (stores.base.kernel_timeouts), not with Python's poll."""

from __future__ import annotations

import socket
import ssl
import struct
import sys

import pytest

from fastsess.stores.base import kernel_timeouts

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="kernel timeouts are used on Linux only")


def receive_timeout(sock: socket.socket) -> float:
    seconds, micros = struct.unpack("@ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.calcsize("@ll")))
    return seconds + micros / 1_000_000


@linux_only
@pytest.mark.timeout(30)
def test_a_socket_with_kernel_timeouts_blocks_in_the_call_and_fails_after_the_timeout():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(5.0)
        assert kernel_timeouts(ours, 0.2)
        assert ours.gettimeout() is None  # blocking: no poll before each call
        assert receive_timeout(ours) == pytest.approx(0.2)
        theirs.sendall(b"reply")
        assert ours.recv(100) == b"reply"
        with pytest.raises(BlockingIOError):  # nothing comes: the kernel ends the wait
            ours.recv(100)


@linux_only
@pytest.mark.parametrize("timeout", [1.0, 2.5, 30.0])
def test_kernel_timeouts_keep_the_seconds(timeout):
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert kernel_timeouts(ours, timeout)
        assert receive_timeout(ours) == pytest.approx(timeout)


@linux_only
def test_a_tiny_kernel_timeout_never_becomes_zero_which_would_mean_none():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        assert kernel_timeouts(ours, 1e-9)
        assert 0 < receive_timeout(ours) < 0.1  # the kernel rounds up to its clock tick


def test_a_tls_socket_keeps_pythons_timeout():
    ours, theirs = socket.socketpair()
    with ours, theirs:
        ours.settimeout(0.7)
        wrapped = ssl.create_default_context().wrap_socket(ours, server_hostname="localhost", do_handshake_on_connect=False)
        with wrapped:
            assert not kernel_timeouts(wrapped, 0.2)
            assert wrapped.gettimeout() == 0.7
