"""Two contenders timed in alternation, for gaps a sequential run cannot resolve.

`fastsess bench` times each contender in its own stretch of rounds. On a
shared machine the speed of a loopback round trip drifts between stretches by
more than the 5 us that SPEC 9 allows a network store over its client
library's bare GET, so one run put the memcached store's read 7.5 us above
the GET and another 13.9. Here both run in one process, in short blocks that alternate
(A B B A, then again), so a slow second hits both alike. Each pair of blocks
gives one difference per request; the result is the median of those.

    python bench/paired.py fastsess-c-memcached pymemcache-GET read
    python bench/paired.py fastsess-c-redis redis-py-GET read --blocks 400

Slugs are bench/harness.py's (`python bench/harness.py x read` lists them).
Needs the same servers as the bench suite (memcached, redis-server).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402 - the bench directory is not a package

#: the network stores' reads against their client's bare GET (SPEC 9, "Network stores")
GET_PAIRS = (("memcached", "pymemcache-GET"), ("redis", "redis-py-GET"))


@dataclass
class Paired:
    a: str
    b: str
    scenario: str
    blocks: int  # pairs of blocks timed
    calls: int  # requests per block
    a_us: float  # median per-request time of a's blocks
    b_us: float
    gap_us: float  # median over block pairs of (a - b) per request
    gap_low_us: float  # the quartiles of those differences
    gap_high_us: float


def time_block(call: Callable[[], bytes], calls: int) -> float:
    """Microseconds per request over `calls` requests."""
    clock = time.perf_counter_ns
    started = clock()
    for _ in range(calls):
        call()
    return (clock() - started) / calls / 1000


class Prepared:
    """Contenders' timed calls, checked and warmed up; check() looks at each one's last status again."""

    def __init__(self, lab: harness.Lab) -> None:
        self.lab = lab
        self._last: list[tuple[str, list]] = []

    def call(self, slug: str, scenario: str) -> Callable[[], bytes]:
        payload = None if scenario in ("untouched", "new") else "300B"
        call, seen = self.lab.prepare(harness.Case(harness._contender(slug), scenario, payload))
        self._last.append((slug, seen))
        return call

    def check(self) -> None:
        """Timed responses that were not a 200 would make the numbers meaningless."""
        for slug, seen in self._last:
            harness.check_status(harness.Response(seen[0], seen[1], b""), slug)


def paired(a: str, call_a: Callable, b: str, call_b: Callable, scenario: str = "read",
           blocks: int = 200, calls: int = 50) -> Paired:
    """Time `call_a` and `call_b` in alternating blocks."""
    times_a, times_b, gaps = [], [], []
    for i in range(blocks):
        if i % 2:  # A B, then B A: whichever runs second in a pair is not always the same one
            tb = time_block(call_b, calls)
            ta = time_block(call_a, calls)
        else:
            ta = time_block(call_a, calls)
            tb = time_block(call_b, calls)
        times_a.append(ta)
        times_b.append(tb)
        gaps.append(ta - tb)
    low, _, high = statistics.quantiles(gaps, n=4)
    return Paired(
        a, b, scenario, blocks, calls, statistics.median(times_a), statistics.median(times_b),
        statistics.median(gaps), low, high,
    )


def get_pairs(prep: Prepared, blocks: int = 200, calls: int = 50) -> list[Paired]:
    """Every network store's read against its client's bare GET, on this process's kernel.

    Each store is paired twice: with the bare GET's request, and with the
    memory store's read followed by the client's GET alone (no second
    request). The second does the same session work and the same round trip
    as the store's read, so its gap is what the store itself adds to the
    client's GET.
    """
    import pytest  # the harness skips, as pytest does, a contender whose server or client is missing

    kernel = harness._KERNEL_TAG
    memory = prep.call(f"fastsess-{kernel}-memory", "read")
    out = []
    for store, get in GET_PAIRS:
        try:
            read = prep.call(f"fastsess-{kernel}-{store}", "read")
            bare = prep.call(get, "read")
        except pytest.skip.Exception as exc:
            print(f"paired: {store} left out: {exc}", file=sys.stderr)
            continue
        client_get = prep.lab.contender_site(harness._contender(get)).client_get

        def memory_then_get(memory=memory, client_get=client_get, get=get) -> None:
            memory()
            if client_get() is None:
                raise AssertionError(f"{get}: the seeded value is gone")

        name = f"fastsess-{kernel}-{store}"
        composite = f"fastsess-{kernel}-memory + {get.replace('-GET', ' get()')}"
        out.append(paired(name, read, get, bare, "read", blocks, calls))
        out.append(paired(name, read, composite, memory_then_get, "read", blocks, calls))
    return out


def describe(p: Paired) -> str:
    sign = "-" if p.gap_us < 0 else "+"
    return (f"{p.a} {p.scenario}: {p.a_us:.2f} us, {p.b} {p.b_us:.2f} us; "
            f"interleaved gap {sign}{abs(p.gap_us):.2f} us (quartiles {p.gap_low_us:+.2f} .. {p.gap_high_us:+.2f}), "
            f"{p.blocks} block pairs of {p.calls} requests")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Time two benchmark contenders in alternating blocks.")
    parser.add_argument("a", nargs="?", help="e.g. fastsess-c-memcached (default: every network store's GET pair)")
    parser.add_argument("b", nargs="?", help="e.g. pymemcache-GET")
    parser.add_argument("scenario", nargs="?", default="read", choices=harness.SCENARIOS)
    parser.add_argument("--blocks", type=int, default=200, help="pairs of blocks (default 200)")
    parser.add_argument("--calls", type=int, default=50, help="requests per block (default 50)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if (args.a is None) != (args.b is None):
        parser.error("give two contenders, or none for the network stores' GET pairs")
    lab = harness.Lab()
    try:
        prep = Prepared(lab)
        if args.a is None:
            results = get_pairs(prep, args.blocks, args.calls)
        else:
            call_a, call_b = prep.call(args.a, args.scenario), prep.call(args.b, args.scenario)
            results = [paired(args.a, call_a, args.b, call_b, args.scenario, args.blocks, args.calls)]
        prep.check()
    finally:
        lab.close()
    if args.json:
        print(json.dumps([asdict(p) for p in results], indent=2))
    else:
        for p in results:
            print(describe(p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
