"""`fastsess bench` keeps working end to end: one scenario, quick, on every kernel there is.

Only that it runs, checks its contenders and writes its files is asserted; the
timings themselves never are.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import fastsess

pytestmark = pytest.mark.slow


def test_bench_quick_one_scenario_writes_results_and_table(tmp_path):
    pytest.importorskip("pytest_benchmark")
    pytest.importorskip("beaker")
    env = dict(os.environ)
    source = str(Path(fastsess.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        [sys.executable, "-m", "fastsess", "bench", "--quick", "--json", "-k", "memory and read",
         "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout)
    assert Path(report["results"]).is_file()
    assert Path(report["table"]).is_file()
    assert report["chart"] is None or Path(report["chart"]).is_file()
    rows = report["rows"]
    assert {r["scenario"] for r in rows} == {"read"}
    assert {r["contender"] for r in rows} >= {"beaker memory"}
    assert any(r["family"] == "fastsess" and r["store"] == "memory" for r in rows)
    assert all(r["overhead_us"] is not None for r in rows)
    assert "beaker memory" in Path(report["table"]).read_text(encoding="utf-8")


def test_versioned_write_script_runs_on_the_embedded_stores(tmp_path):
    # bench/versioned_write.py reaches into store internals for its blind writes; keep it in step.
    env = dict(os.environ)
    source = str(Path(fastsess.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    script = Path(__file__).resolve().parents[1] / "bench" / "versioned_write.py"
    proc = subprocess.run(
        [sys.executable, str(script), "--stores", "memory,file,lmdb", "--rounds", "1", "--writes", "5"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = {line.split()[0]: line for line in proc.stdout.splitlines() if line.split()[:1] in (["memory"], ["file"], ["lmdb"])}
    assert set(rows) == {"memory", "file", "lmdb"}
    assert not any("skipped" in line for line in rows.values()), proc.stdout


def run_paired(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    source = str(Path(fastsess.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (source, env.get("PYTHONPATH")) if p)
    script = Path(__file__).resolve().parents[1] / "bench" / "paired.py"
    return subprocess.run(
        [sys.executable, str(script), *args, "--json"], capture_output=True, text=True, env=env, timeout=240,
    )


def test_paired_script_times_two_contenders_in_alternation():
    kernel = {"c": "c", "python": "py"}[fastsess.core.IMPLEMENTATION]
    a, b = f"fastsess-{kernel}-memory", f"fastsess-{kernel}-lmdb"
    proc = run_paired(a, b, "read", "--blocks", "4", "--calls", "3")
    assert proc.returncode == 0, proc.stderr[-4000:]
    (result,) = json.loads(proc.stdout)
    assert (result["a"], result["b"], result["scenario"], result["blocks"], result["calls"]) == (a, b, "read", 4, 3)
    assert result["a_us"] > 0 and result["b_us"] > 0
    assert result["gap_low_us"] <= result["gap_us"] <= result["gap_high_us"]


def test_paired_script_refuses_one_contender_alone():
    proc = run_paired("fastsess-c-memory")
    assert proc.returncode == 2
    assert "give two contenders" in proc.stderr


def test_paired_script_pairs_each_network_store_with_its_clients_get():
    from server_memcached import require_binary as require_memcached
    from server_redis import require_binary as require_redis

    require_memcached()
    require_redis("redis-server")
    pytest.importorskip("pymemcache")
    pytest.importorskip("redis")
    proc = run_paired("--blocks", "3", "--calls", "3")
    assert proc.returncode == 0, proc.stderr[-4000:]
    kernel = {"c": "c", "python": "py"}[fastsess.core.IMPLEMENTATION]
    pairs = [(r["a"], r["b"]) for r in json.loads(proc.stdout)]
    assert pairs == [
        (f"fastsess-{kernel}-memcached", "pymemcache-GET"),
        (f"fastsess-{kernel}-memcached", f"fastsess-{kernel}-memory + pymemcache get()"),
        (f"fastsess-{kernel}-redis", "redis-py-GET"),
        (f"fastsess-{kernel}-redis", f"fastsess-{kernel}-memory + redis-py get()"),
    ]
