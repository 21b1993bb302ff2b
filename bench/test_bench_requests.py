"""Per-request time of every contender in every scenario, and of each framework's bare route.

conftest.py orders the items: each scenario group is preceded by the bare routes
its contenders are measured against.

Each contender is checked once (harness.Lab) before its first timed call; after
timing, the last response must still be a 200, so an error page is never timed.
"""

from __future__ import annotations


def test_baseline(benchmark, lab, baseline):
    call, seen = lab.prepare_baseline(baseline.name)
    benchmark.group = "baseline"
    benchmark.extra_info.update(baseline.info())
    benchmark(call)
    assert seen[0] == "200 OK", f"baseline {baseline.id}: {seen[0]}"


def test_request(benchmark, lab, case):
    call, seen = lab.prepare(case)
    benchmark.group = case.group
    benchmark.extra_info.update(case.info())
    benchmark(call)
    assert seen[0] == "200 OK", f"{case.id}: {seen[0]}"
