"""Shared fixtures.

`core` runs every kernel test twice: against the C extension (fastsess._core)
and against the pure-Python kernel (fastsess._core_py), so any difference
between the twins is a failing test rather than a surprise in production.
"""

from __future__ import annotations

import os

import pytest

from fastsess import _core_py


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


try:
    from fastsess import _core as _core_c

    _C_IMPORT_ERROR = None
except ImportError as exc:  # not built, or orjson/xxhash missing
    _core_c = None
    _C_IMPORT_ERROR = exc

# CI sets FASTSESS_REQUIRE_EXTENSIONS=1 so that a broken build fails instead of
# quietly testing only the fallback; FASTSESS_NO_EXTENSIONS=1 always wins (SPEC 1).
_C_REQUIRED = _flag("FASTSESS_REQUIRE_EXTENSIONS") and not _flag("FASTSESS_NO_EXTENSIONS")


@pytest.fixture(
    scope="session",
    params=[
        pytest.param("c", id="c-extension", marks=pytest.mark.c_extension),
        pytest.param("python", id="pure-python"),
    ],
)
def core(request):
    """The kernel module under test: fastsess._core, then fastsess._core_py."""
    if request.param == "python":
        return _core_py
    if _core_c is None:
        reason = f"C kernel fastsess._core does not import: {_C_IMPORT_ERROR}"
        if _C_REQUIRED:
            pytest.fail(reason + " (FASTSESS_REQUIRE_EXTENSIONS=1)")
        pytest.skip(reason)
    return _core_c


@pytest.fixture
def redis_server(tmp_path):
    """A redis-server of this test's own (the Beaker migration tests write to it with Beaker's ext:redis)."""
    pytest.importorskip("redis")
    import server_redis

    server = server_redis.RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()
