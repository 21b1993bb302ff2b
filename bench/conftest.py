"""pytest wiring for the benchmark suite: options, parametrization, the shared Lab, machine info.

Run it through `fastsess bench` (both kernels, merged report), or directly:
    pytest bench/ --benchmark-json=bench/results/raw.json
    FASTSESS_NO_EXTENSIONS=1 pytest bench/ --bench-families=fastsess
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import fastsess

sys.path.insert(0, str(Path(__file__).resolve().parent))

import harness  # noqa: E402  (bench/ is not a package)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fastsess bench")
    group.addoption(
        "--bench-families", default=",".join(harness.FAMILIES),
        help=f"comma-separated contender families to run (default: {','.join(harness.FAMILIES)})",
    )
    group.addoption("--bench-quick", action="store_true", help="only the 300-byte payload")


def _families(config: pytest.Config) -> list[str]:
    families = [f.strip() for f in config.getoption("--bench-families").split(",") if f.strip()]
    unknown = set(families) - set(harness.FAMILIES)
    if unknown:
        raise pytest.UsageError(f"unknown --bench-families {sorted(unknown)}; known: {list(harness.FAMILIES)}")
    return families


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    chosen = harness.cases(_families(metafunc.config), quick=metafunc.config.getoption("--bench-quick"))
    if "case" in metafunc.fixturenames:
        metafunc.parametrize("case", chosen, ids=[c.id for c in chosen])
    if "baseline" in metafunc.fixturenames:
        baselines = harness.baseline_cases(chosen)
        metafunc.parametrize("baseline", baselines, ids=[b.id for b in baselines])


@pytest.hookimpl(trylast=True)  # after -k has deselected what it will
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each scenario group runs right after the bare routes it needs; unneeded bare routes are dropped."""
    cases: list = []
    baselines: dict = {}
    others = []
    for item in items:
        callspec = getattr(item, "callspec", None)
        params = callspec.params if callspec is not None else {}
        if "case" in params:
            cases.append((params["case"], item))
        elif "baseline" in params:
            baselines[params["baseline"]] = item
        else:
            others.append(item)
    ordered, kept = [], set()
    for group in dict.fromkeys(case.group for case, _ in cases):
        needed = harness.baseline_cases(case for case, _ in cases if case.group == group)
        for baseline in needed:
            if baseline in baselines:
                ordered.append(baselines[baseline])
                kept.add(baseline)
        ordered.extend(item for case, item in cases if case.group == group)
    dropped = [item for baseline, item in baselines.items() if baseline not in kept]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = others + ordered


@pytest.fixture(scope="session")
def lab():
    lab = harness.Lab()
    yield lab
    lab.close()


#: Distributions whose versions go into the results, next to fastsess's own.
_VERSIONED = (
    "beaker", "flask", "werkzeug", "django", "orjson", "xxhash", "lmdb", "cryptography", "pymemcache",
    "python-memcached", "redis", "sqlalchemy", "pytest-benchmark",
)
#: Servers of the network stores, and how each names its version.
_SERVERS = {"memcached": ("memcached", "-V"), "redis-server": ("redis-server", "--version")}


def server_version(name: str) -> str | None:
    """The version a server binary reports ("memcached 1.6.21" -> "1.6.21"), or None if it is not there."""
    binary = shutil.which(_SERVERS[name][0])
    if binary is None:
        return None
    try:
        text = subprocess.run([binary, _SERVERS[name][1]], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"\b[vV]?=?(\d+\.\d+\.\d+)", text)
    return match.group(1) if match else text.strip()[:40] or None


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    """What a reader needs to judge the numbers: CPU, cores, kernel and library versions."""
    machine_info["fastsess"] = {
        "cpu_model": harness.cpu_model(),
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "kernel": harness.KERNEL,
        "versions": {
            "fastsess": fastsess.__version__,
            **{dist: harness.dist_version(dist) for dist in _VERSIONED},
            **{f"{name} (server)": server_version(name) for name in _SERVERS},
        },
        "payload_bytes": {name: harness.payload_bytes(name) for name in harness.PAYLOADS},
    }
