"""Lost updates under concurrency: Beaker 1.14's file store against fastsess's file and lmdb stores.

A documented comparison, not a test (the guarantee itself is tested in
tests/test_concurrency.py, with the same application and client). Each
contender runs tests/concurrency_app.py under gunicorn with 4 sync workers on
127.0.0.1, and a client with 32 threads fires at one session:

- own keys: 200 concurrent requests, each setting its own key; then one
  request reads the session back and counts the keys that are missing;
- mixed: with keys d0..d49 stored, 100 requests set new keys, 50 delete the
  d-keys and 50 only read; counts new keys missing and deleted keys back.

Beaker loads the whole session, and at the end of the request saves the whole
of it, even for a request that only read it, so concurrent requests overwrite
each other's changes. fastsess saves a compare-and-set of only what changed
and merges on conflict.

Run from the repository root (needs gunicorn and beaker==1.14.1):

    PYTHONPATH=src python bench/concurrency_beaker.py            # 3 runs per contender
    PYTHONPATH=src python bench/concurrency_beaker.py --runs 10 --hold 0.002

--hold makes every handler sleep between loading the session and writing it,
as one doing I/O would; the default is a handler that does nothing else.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import fastsess  # noqa: E402
from concurrency_app import GunicornServer, fire, new_session, request  # noqa: E402
from harness import cpu_model, dist_version  # noqa: E402

CONTENDERS = ("beaker-file", "file", "lmdb")  # beaker-file: Beaker 1.14, type = file
REQUESTS = 200


def own_keys_round(port: int, hold: float) -> tuple[int, Counter]:
    """(keys lost of REQUESTS, reply statuses)."""
    cookie = new_session(port)
    replies = fire(port, [f"/set?k=key{i}&hold={hold}" for i in range(REQUESTS)], cookie)
    data = request(port, "/data", cookie).json()
    return sum(f"key{i}" not in data for i in range(REQUESTS)), Counter(r.status for r in replies)


def mixed_round(port: int, hold: float) -> tuple[int, int, Counter]:
    """(new keys lost of 100, deleted keys back of 50, reply statuses)."""
    cookie = new_session(port)
    for i in range(50):  # one at a time: the starting point must be exact for every contender
        request(port, f"/set?k=d{i}", cookie)
    paths = (
        [f"/set?k=n{i}&hold={hold}" for i in range(100)]
        + [f"/del?k=d{i}&hold={hold}" for i in range(50)]
        + [f"/get?k=seed&hold={hold}"] * 50
    )
    random.Random(5).shuffle(paths)
    replies = fire(port, paths, cookie)
    data = request(port, "/data", cookie).json()
    lost = sum(f"n{i}" not in data for i in range(100))
    back = sum(f"d{i}" in data for i in range(50))
    return lost, back, Counter(r.status for r in replies)


def run_contender(kind: str, runs: int, hold: float) -> dict:
    results: dict = {"own": [], "mixed_lost": [], "mixed_back": [], "statuses": Counter(), "seconds": 0.0}
    with tempfile.TemporaryDirectory(prefix=f"concurrency-{kind}-") as directory:
        env = {
            "FASTSESS_CONCURRENCY_STORE": kind,
            "FASTSESS_CONCURRENCY_DATA_DIR": os.path.join(directory, "data"),
        }
        server = GunicornServer(env, workers=4, directory=directory).start()
        try:
            started = time.perf_counter()
            for _ in range(runs):
                lost, statuses = own_keys_round(server.port, hold)
                results["own"].append(lost)
                results["statuses"] += statuses
                lost, back, statuses = mixed_round(server.port, hold)
                results["mixed_lost"].append(lost)
                results["mixed_back"].append(back)
                results["statuses"] += statuses
            results["seconds"] = time.perf_counter() - started
        finally:
            server.stop()
    return results


def _spread(values: list[int]) -> str:
    return f"{min(values)}-{max(values)} (median {statistics.median(values):g})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=3, help="rounds of each scenario (default 3)")
    parser.add_argument("--hold", type=float, default=0.0, help="seconds a handler holds the loaded session")
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated, from: "
                        + ", ".join(CONTENDERS))
    args = parser.parse_args(argv)
    print(f"{cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
          f"fastsess {fastsess.__version__}, Beaker {dist_version('beaker')}, gunicorn {dist_version('gunicorn')}")
    print(f"gunicorn -w 4 (sync), 32 client threads, {REQUESTS} requests per round, "
          f"{args.runs} runs, hold {args.hold} s\n")
    header = (f"{'store':<12} {'own keys lost (of 200)':<26} {'mixed: new keys lost (of 100)':<31} "
              f"{'mixed: deleted keys back (of 50)':<34} {'non-200':<8} seconds")
    print(header)
    print("-" * len(header))
    for kind in args.contenders.split(","):
        r = run_contender(kind.strip(), args.runs, args.hold)
        failed = sum(count for status, count in r["statuses"].items() if status != 200)
        print(f"{kind:<12} {_spread(r['own']):<26} {_spread(r['mixed_lost']):<31} "
              f"{_spread(r['mixed_back']):<34} {failed:<8} {r['seconds']:.1f}")


if __name__ == "__main__":
    main()
