"""`fastsess bench`: runs the benchmark suite of a source checkout on both kernels and reports once.

The kernel is chosen when fastsess is imported, so one process cannot time both:
pytest runs twice, first on the C kernel (every contender), then with
FASTSESS_NO_EXTENSIONS=1 (fastsess only). Each pass writes pytest-benchmark's
JSON; the two are merged, every benchmark tagged with its kernel, and turned
into a table with ratios and a chart by bench/report.py.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import TextIO

#: pytest-benchmark settings per mode. A round lasts at least min-time, so that
#: microsecond requests are timed in batches rather than one timer call each. The
#: garbage collector is off while timing: all contenders share one process, and a
#: full collection walks every object in it, so one contender's stored sessions
#: would be charged to the next. (With it on, the frameworks that allocate most,
#: Flask and Django, would look slower still.)
FULL_OPTIONS = (
    "--benchmark-min-time=0.0001", "--benchmark-max-time=1.0", "--benchmark-min-rounds=5",
    "--benchmark-disable-gc",
)
QUICK_OPTIONS = (
    "--benchmark-min-time=0.00005", "--benchmark-max-time=0.05", "--benchmark-min-rounds=3",
    "--benchmark-disable-gc", "--bench-quick",
)

#: The contender families of the first pass (bench/harness.py FAMILIES); "client" is the network
#: client libraries' bare GET, which does not depend on the kernel and so runs once.
EVERY_FAMILY = "fastsess,beaker,flask,django,client"

EXIT_OK, EXIT_FAILED, EXIT_SETUP = 0, 1, 2
_PYTEST_NO_TESTS = 5
_RESULT_LINE = re.compile(r"::(test_\w+\[[^\]]*\])\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b.*?\[\s*(\d+)/(\d+)\]")


class BenchSetupError(Exception):
    """`fastsess bench` cannot run here; the message says what to do."""


def find_bench_dir() -> Path:
    """bench/ of the source checkout this package is imported from (src/fastsess -> ../../bench)."""
    package = Path(__file__).resolve().parent
    candidate = package.parent.parent / "bench"
    if (candidate / "test_bench_requests.py").is_file() and (candidate / "report.py").is_file():
        return candidate
    raise BenchSetupError(
        f"no benchmark suite found: fastsess is imported from {package}, and there is no "
        f"{candidate / 'test_bench_requests.py'}. The benchmarks ship with the source, not the wheel: clone the "
        "repository and install it with `pip install -e '.[bench]'` (or run `make bench`)."
    )


def _check_tools() -> None:
    missing = [name for name in ("pytest", "pytest_benchmark") if importlib.util.find_spec(name) is None]
    if missing:
        raise BenchSetupError(
            f"missing {', '.join(missing)}: install the benchmark extra, `pip install -e '.[bench]'`"
        )


def c_kernel_status() -> str | None:
    """None when the C kernel can be timed, else why not."""
    if os.environ.get("FASTSESS_NO_EXTENSIONS", "") not in ("", "0"):
        return "FASTSESS_NO_EXTENSIONS is set"
    try:
        import fastsess._core  # noqa: F401
    except ImportError as exc:
        return f"the C kernel is not built ({exc})"
    return None


def load_report_module(bench: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("fastsess_bench_report", bench / "report.py")
    if spec is None or spec.loader is None:
        raise BenchSetupError(f"cannot load {bench / 'report.py'}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def _pass_env(kernel: str) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("FASTSESS_NO_EXTENSIONS", None)
    env.pop("FASTSESS_REQUIRE_EXTENSIONS", None)
    if kernel == "c":
        env["FASTSESS_REQUIRE_EXTENSIONS"] = "1"  # never time the fallback under the C kernel's name
    else:
        env["FASTSESS_NO_EXTENSIONS"] = "1"
    return env


def run_pass(
    bench: Path, kernel: str, families: str, json_path: Path, quick: bool, select: str | None, progress: TextIO,
) -> int:
    """One pytest run over bench/ on one kernel; progress goes to `progress`. Returns pytest's exit code."""
    cmd = [
        sys.executable, "-m", "pytest", str(bench), "-v", "--color=no", "-p", "no:cacheprovider",
        "-o", "console_output_style=count", "--benchmark-quiet", f"--benchmark-json={json_path}",
        f"--bench-families={families}", *(QUICK_OPTIONS if quick else FULL_OPTIONS),
    ]
    if select:
        cmd += ["-k", f"({select}) or baseline"]  # overhead needs each framework's bare route
    tty = progress.isatty()
    lines: list[str] = []
    started = time.monotonic()
    with subprocess.Popen(
        cmd, cwd=bench.parent, env=_pass_env(kernel), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, encoding="utf-8", errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            match = _RESULT_LINE.search(line)
            if match:
                name, status, done, total = match.groups()
                text = f"  [{kernel} kernel {done:>3}/{total}] {name} {status}"
                if tty:
                    progress.write(f"\r\033[K{text}")
                else:
                    progress.write(text + "\n")
                progress.flush()
    code = proc.returncode
    if tty:
        progress.write("\r\033[K")
    if code not in (0, _PYTEST_NO_TESTS):
        progress.write("".join(lines[-60:]))
    progress.write(f"  {kernel} kernel pass: pytest exit {code} in {time.monotonic() - started:.1f} s\n")
    progress.flush()
    return code


#: block pairs per pair of contenders in bench/paired.py's interleaved run
PAIRED_BLOCKS = {False: 200, True: 60}


def run_paired(bench: Path, quick: bool, progress: TextIO) -> list[dict] | None:
    """bench/paired.py's network-store pairs on the C kernel, as dicts; None (with a note) when it fails."""
    progress.write("interleaved: the network stores' reads against their clients' GET (bench/paired.py)\n")
    progress.flush()
    cmd = [sys.executable, str(bench / "paired.py"), "--json", "--blocks", str(PAIRED_BLOCKS[quick])]
    try:
        done = subprocess.run(
            cmd, cwd=bench.parent, env=_pass_env("c"), capture_output=True, text=True, timeout=900,
        )
    except subprocess.TimeoutExpired:
        progress.write("  interleaved run timed out; left out\n")
        return None
    if done.returncode != 0:
        progress.write(done.stderr[-3000:] + f"  interleaved run failed (exit {done.returncode}); left out\n")
        return None
    return json.loads(done.stdout)


def merge(passes: list[tuple[str, dict]]) -> dict:
    """One pytest-benchmark-shaped document from several passes; raw timings dropped, kernel tagged."""
    first = passes[0][1]
    merged = {
        "machine_info": first.get("machine_info", {}),
        "commit_info": first.get("commit_info", {}),
        "datetime": first.get("datetime"),
        "version": first.get("version"),
        "passes": [],
        "benchmarks": [],
    }
    for kernel, data in passes:
        benchmarks = data.get("benchmarks", [])
        for b in benchmarks:
            b.get("stats", {}).pop("data", None)
            measured = b.setdefault("extra_info", {}).get("kernel", kernel)
            if measured != kernel:
                raise RuntimeError(f"{b.get('name')}: ran on the {measured} kernel in the {kernel} pass")
            b["extra_info"]["kernel"] = kernel
        merged["passes"].append({
            "kernel": kernel,
            "datetime": data.get("datetime"),
            "benchmarks": len(benchmarks),
            "machine_info": data.get("machine_info", {}).get("fastsess", {}),
        })
        merged["benchmarks"].extend(benchmarks)
    return merged


def run(
    quick: bool = False,
    as_json: bool = False,
    out: str | None = None,
    select: str | None = None,
    progress: TextIO | None = None,
) -> int:
    """Run the passes, merge, write JSON, table and chart into `out`; print the table or JSON."""
    progress = progress or sys.stderr
    try:
        bench = find_bench_dir()
        _check_tools()
        report = load_report_module(bench)
    except BenchSetupError as exc:
        print(f"fastsess bench: {exc}", file=sys.stderr)
        return EXIT_SETUP
    out_dir = Path(out) if out else bench / "results"
    out_dir.mkdir(parents=True, exist_ok=True)

    no_c = c_kernel_status()
    if no_c is None:
        plan = [("c", EVERY_FAMILY), ("python", "fastsess")]
    else:
        progress.write(f"fastsess bench: {no_c}; timing the pure-Python kernel only\n")
        plan = [("python", EVERY_FAMILY)]

    passes: list[tuple[str, dict]] = []
    with tempfile.TemporaryDirectory(prefix="fastsess-bench-") as tmp:
        for number, (kernel, families) in enumerate(plan, 1):
            if passes and not any(
                b.get("extra_info", {}).get("family") == "fastsess" for b in passes[-1][1]["benchmarks"]
            ):
                progress.write(f"pass {number}/{len(plan)} skipped: the selection has no fastsess benchmark\n")
                break
            progress.write(f"pass {number}/{len(plan)}: {kernel} kernel ({families})"
                           f"{', quick' if quick else ''}{f', -k {select!r}' if select else ''}\n")
            raw = Path(tmp) / f"{kernel}.json"
            code = run_pass(bench, kernel, families, raw, quick, select, progress)
            if code not in (0, _PYTEST_NO_TESTS) or not raw.is_file():
                print(f"fastsess bench: the {kernel} kernel pass failed (pytest exit {code}); "
                      "see the output above", file=sys.stderr)
                return EXIT_FAILED
            passes.append((kernel, json.loads(raw.read_text(encoding="utf-8"))))

    merged = merge(passes)
    rows, baselines = report.summarize(merged)
    if not rows:
        print(f"fastsess bench: -k {select!r} selected no benchmark", file=sys.stderr)
        return EXIT_SETUP
    # The GET pairs again, interleaved, when this run timed them with the C kernel.
    timed = {(r.contender, r.group) for r in rows}
    if no_c is None and {("pymemcache GET", "read 300B"), ("redis-py GET", "read 300B")} & timed:
        merged["paired"] = run_paired(bench, quick, progress)
    targets = report.check_targets(rows, merged.get("paired"))
    table = report.render_table(merged, rows, baselines, targets)

    results_path = out_dir / "bench.json"
    table_path = out_dir / "bench.txt"
    results_path.write_text(json.dumps(merged, indent=1) + "\n", encoding="utf-8")
    table_path.write_text(table, encoding="utf-8")
    chart_path: Path | None = out_dir / "bench.png"
    try:
        report.plot(merged, rows, chart_path)
    except ImportError as exc:
        progress.write(f"fastsess bench: no chart ({exc}); `pip install matplotlib` draws one\n")
        chart_path = None

    if as_json:
        print(json.dumps({
            "results": str(results_path),
            "table": str(table_path),
            "chart": str(chart_path) if chart_path else None,
            "machine": merged["machine_info"].get("fastsess", {}),
            "passes": merged["passes"],
            "stat": report.DEFAULT_STAT,
            "baselines": [
                {"framework": f, "kernel": k, **vars(b)} for (f, k), b in sorted(baselines.items())
            ],
            "rows": report.rows_as_json(rows),
            "targets": [vars(t) for t in targets],
            "paired": merged.get("paired"),
        }, indent=1))
    else:
        sys.stdout.write(table)
        print(f"\nwrote {results_path}, {table_path}" + (f" and {chart_path}" if chart_path else ""))
    return EXIT_OK
