"""HTTP load: requests per second of a hello-world app under gunicorn, without sessions and reading one.

SPEC 9, "Under HTTP load". gunicorn with 2 sync workers on 127.0.0.1 serves the
same hello-world app three ways: without sessions, reading a fastsess lmdb
session, and reading a Beaker file session (both configured as in the
per-request suite, harness.build_fastsess and harness.build_beaker). Every
request to a session app carries the cookie of a live session holding the
typical 300-byte payload, and the app answers 403 unless it reads the session's
user_id back: a request that did not read a session never counts.

The load generator is wrk when it is installed, else a Python client (several
processes, each a keep-alive loop of http.client; gunicorn's sync workers close
every connection, and the loop reconnects). Either one runs on the same machine
as the servers and takes its share of the CPUs, equally for every app. Each pass
runs for a fixed time; the apps take turns (A, B, C, A, B, C, ...) for at least
5 passes, so that a slow second on a shared machine hits all of them alike. The
report gives each app's median requests per second, the ratios of the medians
to the app without sessions, and the gate: lmdb keeps at least 90% (the aim is
95%). Exit status: 0 PASS, 1 FAIL, 2 when the benchmark cannot run.

Writes http_load.json and http_load.png (matplotlib, Agg) into bench/results/.

    python bench/http_load.py [--quick] [--passes 5] [--seconds 5] [--client auto|wrk|python]
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import http.client
import importlib.util
import json
import multiprocessing
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import NoReturn

import fastsess

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR))

import harness  # noqa: E402  (bench/ is not a package)

#: The three apps, in the order each pass runs them.
VARIANTS = {
    "none": "no sessions",
    "lmdb": "fastsess lmdb read",
    "beaker-file": "Beaker file read",
}
GATE, AIM = 0.90, 0.95
MIN_PASSES = 5
WORKERS = 2
START_TIMEOUT = 30.0  # seconds for gunicorn to answer its first request
STOP_TIMEOUT = 10.0
BODY = b"Hello, world!\n"


# ---------------------------------------------------------------- the app (runs in gunicorn's workers)


def hello(environ: dict, start_response: Callable) -> list[bytes]:
    """`/` answers hello, after reading user_id from the session when there is one; `/seed` makes one."""
    session = environ.get("beaker.session")
    if environ["PATH_INFO"] == "/seed" and session is not None:
        session.update(harness.PAYLOAD_300)
        session.save()
    elif session is not None and session.get("user_id") != harness.USER_ID:
        start_response("403 Forbidden", [("Content-Type", "text/plain"), ("Content-Length", "0")])
        return [b""]
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))])
    return [BODY]


def make_app(variant: str, workdir: str) -> Callable:
    """gunicorn's app factory (`http_load:make_app('lmdb', '/tmp/...')`), called in each worker."""
    if variant == "none":
        return hello
    if variant == "lmdb":
        return harness.build_fastsess("lmdb", app=hello)(Path(workdir)).app
    if variant == "beaker-file":
        return harness.build_beaker("file", app=hello)(Path(workdir)).app
    raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")


# ---------------------------------------------------------------- servers


class SetupError(Exception):
    """The benchmark cannot run here; the message says why."""


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when this script dies, so that no server outlives a killed run."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def get(port: int, path: str, cookie: str | None = None, timeout: float = 5.0) -> http.client.HTTPResponse:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        response = conn.getresponse()
        response.read()
        return response
    finally:
        conn.close()


@dataclass
class Server:
    """One gunicorn (a master and WORKERS sync workers) serving one variant on a free loopback port."""

    variant: str
    workdir: Path
    port: int = 0
    cookie: str | None = None
    process: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.process is not None, "the server is not running"
        return self.process.pid

    @property
    def log(self) -> Path:
        return self.workdir / "gunicorn.log"

    def start(self) -> Server:
        """Start gunicorn on a port the kernel picks, wait for its first answer, and (for a session app)
        make the session."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._spawn()
        self.port = self._wait_listening()
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                get(self.port, "/", timeout=2.0)  # any answer will do: a session app says 403 here
                break
            except (OSError, http.client.HTTPException):
                if self.process is None or self.process.poll() is not None or time.monotonic() > deadline:
                    self._failed("did not answer")
                time.sleep(0.05)
        if self.variant != "none":
            self.cookie = self._seed()
        return self

    def _spawn(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # The workers import the same fastsess as this script.
        fastsess_path = str(Path(harness.core.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (fastsess_path, env.get("PYTHONPATH")) if p)
        cmd = [
            sys.executable, "-m", "gunicorn", "--workers", str(WORKERS), "--worker-class", "sync",
            "--bind", "127.0.0.1:0", "--chdir", str(BENCH_DIR), "--log-level", "info",
            "--graceful-timeout", "3", *_gunicorn_quiet_options(),
            f"http_load:make_app({self.variant!r}, {str(self.workdir / 'app')!r})",
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent,
            )

    def _wait_listening(self) -> int:
        """The port gunicorn bound (it logs "Listening at: http://127.0.0.1:PORT (PID)")."""
        assert self.process is not None
        pattern = re.compile(rf"Listening at: http://127\.0\.0\.1:(\d+) \({self.process.pid}\)")
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline and self.process.poll() is None:
            match = pattern.search(self.log.read_text(errors="replace"))
            if match:
                return int(match.group(1))
            time.sleep(0.05)
        self._failed("did not start")

    def _failed(self, what: str) -> NoReturn:
        log = self.log.read_text(errors="replace")[-3000:]
        self.stop()
        raise SetupError(f"gunicorn ({self.variant}) {what}:\n{log}")

    def _seed(self) -> str:
        """A live session with the 300-byte payload, checked to read back, and a request without it refused."""
        response = get(self.port, "/seed")
        cookie = (response.getheader("Set-Cookie") or "").split(";", 1)[0].strip()
        if response.status != 200 or not cookie:
            raise SetupError(f"{self.variant}: /seed answered {response.status} with no session cookie")
        for _ in range(2 * WORKERS + 2):
            status = get(self.port, "/", cookie).status
            if status != 200:
                raise SetupError(f"{self.variant}: the seeded session did not read back (status {status})")
        if get(self.port, "/").status != 403:
            raise SetupError(f"{self.variant}: a request without the session was not refused")
        return cookie

    def stop(self) -> None:
        """SIGTERM to the master by pid (it stops its workers), SIGKILL if it lingers; reaped either way."""
        process, self.process = self.process, None
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(STOP_TIMEOUT)


@functools.cache
def _gunicorn_quiet_options() -> tuple[str, ...]:
    """--no-control-socket where gunicorn has a control socket (a shared path under ~/.gunicorn)."""
    help_text = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--help"], capture_output=True, text=True, timeout=30,
    ).stdout
    return ("--no-control-socket",) if "--no-control-socket" in help_text else ()


# ---------------------------------------------------------------- load generators


@dataclass
class PassResult:
    variant: str
    requests_per_second: float
    requests: int
    failed: int  # non-2xx answers and socket errors; a pass with any is refused
    seconds: float
    server_cpu_us: float | None = None  # CPU time of gunicorn's processes per request


def tree_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time used so far by a process and its live children (Linux /proc), else None.

    Requests per second fall when other tenants take the CPUs; the CPU time the
    servers spend per request moves much less, so it is reported next to them.
    """
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        total = 0.0
        for one in (pid, *map(int, children)):
            fields = Path(f"/proc/{one}/stat").read_text().rpartition(")")[2].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
        return total
    except (OSError, ValueError, IndexError):
        return None


class Wrk:
    """wrk, a few threads and connections: enough to keep both sync workers busy."""

    def __init__(self, binary: str, threads: int = 2, connections: int = 8) -> None:
        self.binary, self.threads, self.connections = binary, threads, connections

    @property
    def description(self) -> str:
        return f"{wrk_version(self.binary)}, {self.threads} threads, {self.connections} connections"

    def run(self, server: Server, seconds: float) -> PassResult:
        cmd = [self.binary, f"-t{self.threads}", f"-c{self.connections}", f"-d{seconds:g}s", "--timeout", "5s"]
        if server.cookie:
            cmd += ["-H", f"Cookie: {server.cookie}"]
        cmd.append(f"http://127.0.0.1:{server.port}/")
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 30).stdout
        return parse_wrk(server.variant, out, seconds)


def parse_wrk(variant: str, text: str, seconds: float) -> PassResult:
    """Requests/s, requests, and failures (non-2xx answers and socket errors) from wrk's output."""
    rate = re.search(r"Requests/sec:\s*([\d.]+)", text)
    total = re.search(r"(\d+) requests in ([\d.]+)(\w+)", text)
    if rate is None or total is None:
        raise RuntimeError(f"wrk printed no result:\n{text[-2000:]}")
    failed = 0
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    if non_2xx:
        failed += int(non_2xx.group(1))
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if errors:
        failed += sum(int(n) for n in errors.groups())
    return PassResult(variant, float(rate.group(1)), int(total.group(1)), failed, seconds)


def wrk_version(binary: str) -> str:
    text = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    match = re.search(r"wrk\s+(\S+)", text)
    return f"wrk {match.group(1)}" if match else "wrk"


def _client_process(port: int, path: str, cookie: str | None, pipe) -> None:
    """One Python client: tell the parent it is ready, wait for the end time, then loop requests."""
    headers = {"Cookie": cookie} if cookie else {}
    pipe.send("ready")
    stop_at = pipe.recv()
    ok = failed = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while time.monotonic() < stop_at:
        try:
            conn.request("GET", path, headers=headers)
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                ok += 1
            else:
                failed += 1
        except (OSError, http.client.HTTPException):
            failed += 1
            conn.close()
    conn.close()
    pipe.send((ok, failed))


class PythonClient:
    """Several client processes (so the GIL is not the limit), each an http.client keep-alive loop."""

    def __init__(self, processes: int = 4) -> None:
        self.processes = processes
        methods = multiprocessing.get_all_start_methods()
        self.context = multiprocessing.get_context("fork" if "fork" in methods else "spawn")

    @property
    def description(self) -> str:
        return f"Python http.client, {self.processes} processes"

    def run(self, server: Server, seconds: float) -> PassResult:
        pipes, children = [], []
        try:
            for _ in range(self.processes):
                parent_end, child_end = self.context.Pipe()
                child = self.context.Process(
                    target=_client_process, args=(server.port, "/", server.cookie, child_end), daemon=True,
                )
                child.start()
                pipes.append(parent_end)
                children.append(child)
            for pipe in pipes:
                if not pipe.poll(30) or pipe.recv() != "ready":
                    raise RuntimeError("a client process did not start")
            stop_at = time.monotonic() + seconds
            for pipe in pipes:
                pipe.send(stop_at)
            ok = failed = 0
            for pipe in pipes:
                if not pipe.poll(seconds + 30):
                    raise RuntimeError("a client process did not finish")
                done, bad = pipe.recv()
                ok, failed = ok + done, failed + bad
        finally:
            for child in children:
                child.join(5)
                if child.is_alive():
                    child.kill()
                    child.join(5)
        return PassResult(server.variant, ok / seconds, ok, failed, seconds)


def load_generator(choice: str) -> Wrk | PythonClient:
    binary = shutil.which("wrk")
    if choice == "wrk" and binary is None:
        raise SetupError("wrk is not installed (apt-get install wrk), and --client wrk asks for it")
    if choice in ("auto", "wrk") and binary is not None:
        return Wrk(binary)
    return PythonClient()


# ---------------------------------------------------------------- the run


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def summarize(results: list[PassResult]) -> dict:
    """Medians per variant, ratios of the medians to the app without sessions, and the gate."""
    by_variant = {v: [r.requests_per_second for r in results if r.variant == v] for v in VARIANTS}
    medians = {v: median(rps) for v, rps in by_variant.items()}
    base = medians["none"]
    ratios = {v: medians[v] / base for v in VARIANTS if v != "none"}
    passes = len(by_variant["none"])
    per_pass = {  # the ratio within each pass, a check on the ratio of medians
        v: median(by_variant[v][i] / by_variant["none"][i] for i in range(passes)) for v in ratios
    }
    cpu = {v: [r.server_cpu_us for r in results if r.variant == v and r.server_cpu_us] for v in VARIANTS}
    cpu_medians = {v: median(us) if us else None for v, us in cpu.items()}
    ratio = ratios["lmdb"]
    return {
        "requests_per_second": by_variant,
        "median_requests_per_second": medians,
        "ratio_to_no_sessions": ratios,
        "median_of_per_pass_ratios": per_pass,
        "median_server_cpu_us_per_request": cpu_medians,
        "gate": {
            "what": "fastsess lmdb read keeps >= 90% of the requests/s without sessions (aim 95%)",
            "threshold": GATE, "aim": AIM, "ratio": ratio,
            "status": "PASS" if ratio >= GATE else "FAIL", "aim_met": ratio >= AIM,
        },
    }


def machine_info(generator: Wrk | PythonClient) -> dict:
    versions = {"fastsess": fastsess.__version__}
    versions.update({d: harness.dist_version(d) for d in ("beaker", "gunicorn", "lmdb", "orjson")})
    return {
        "cpu_model": harness.cpu_model(),
        "nproc": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "kernel": harness.KERNEL,
        "versions": versions,
        "load_generator": generator.description,
        "workers": f"gunicorn, {WORKERS} sync workers, 127.0.0.1",
    }


def run(passes: int, seconds: float, warmup: float, generator: Wrk | PythonClient, progress=sys.stderr) -> dict:
    """Start the three servers, warm each up, run the interleaved passes, stop the servers."""
    started = time.monotonic()
    load_before = os.getloadavg()
    workdir = Path(tempfile.mkdtemp(prefix="fastsess-http-load-"))
    servers: dict[str, Server] = {}
    results: list[PassResult] = []
    try:
        for variant in VARIANTS:
            servers[variant] = Server(variant, workdir / variant)  # in the dict first: stopped if start fails
            servers[variant].start()
            progress.write(f"  gunicorn for {VARIANTS[variant]!r} on 127.0.0.1:{servers[variant].port}\n")
        # The same request bytes for the app without sessions: it ignores the cookie.
        servers["none"].cookie = servers["lmdb"].cookie
        for server in servers.values():
            generator.run(server, warmup)  # imports, first store pages, the workers' caches
        for number in range(1, passes + 1):
            for variant, server in servers.items():
                cpu_before = tree_cpu_seconds(server.pid)
                result = generator.run(server, seconds)
                cpu_after = tree_cpu_seconds(server.pid)
                if cpu_before is not None and cpu_after is not None and result.requests:
                    result.server_cpu_us = (cpu_after - cpu_before) / result.requests * 1e6
                if result.failed:
                    raise RuntimeError(
                        f"pass {number}, {VARIANTS[variant]}: {result.failed} failed requests "
                        f"(a session app answers 403 when it cannot read the session)"
                    )
                results.append(result)
                cpu = f", server CPU {result.server_cpu_us:.0f} us/req" if result.server_cpu_us else ""
                progress.write(f"  pass {number}/{passes}  {VARIANTS[variant]:<20} "
                               f"{result.requests_per_second:>9,.0f} req/s{cpu}\n")
                progress.flush()
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "datetime": datetime.now(timezone.utc).isoformat(),
        "machine": machine_info(generator),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "seconds_per_pass": seconds,
        "passes": passes,
        "order": list(VARIANTS),
        "labels": VARIANTS,
        "elapsed_seconds": round(time.monotonic() - started, 1),
        "results": [asdict(r) for r in results],
        **summarize(results),
    }


def render(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"HTTP load: requests/s, median of {report['passes']} interleaved passes of "
        f"{report['seconds_per_pass']:g} s (higher is better)",
        f"machine: {m['cpu_model']}, {m['nproc']} CPUs, {m['platform']}; python {m['python']}, "
        f"{m['kernel']} kernel",
        "versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v),
        f"servers: {m['workers']}; load generator: {m['load_generator']} (same machine)",
        "",
        f"  {'app':<20} {'median req/s':>12}  {'vs no sessions':>14}  {'server CPU':>10}   req/s by pass",
    ]
    cpu = report["median_server_cpu_us_per_request"]
    for variant, label in report["labels"].items():
        rps = report["requests_per_second"][variant]
        ratio = report["ratio_to_no_sessions"].get(variant, 1.0)
        us = f"{cpu[variant]:.0f} us/req" if cpu.get(variant) else "-"
        lines.append(
            f"  {label:<20} {report['median_requests_per_second'][variant]:>12,.0f}  {ratio:>14.1%}  {us:>10}   "
            + " ".join(f"{r:,.0f}" for r in rps)
        )
    gate = report["gate"]
    lines += [
        "",
        f"gate: fastsess lmdb keeps {gate['ratio']:.1%} of the requests/s without sessions "
        f"(needs >= {gate['threshold']:.0%}, aim {gate['aim']:.0%}): {gate['status']}"
        + ("" if gate["status"] == "FAIL" else f", aim {'met' if gate['aim_met'] else 'not met'}"),
        f"Beaker file keeps {report['ratio_to_no_sessions']['beaker-file']:.1%} "
        "(29-33% on the reference machine)",
        "as a check, the median of the ratios within each pass: " + ", ".join(
            f"{report['labels'][v]} {r:.1%}" for v, r in report["median_of_per_pass_ratios"].items()
        ),
        "server CPU: user + system time of gunicorn's master and workers per request (median of passes);",
        "other tenants of the machine move it much less than they move requests/s.",
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict, path: Path) -> Path:
    """Bars of median requests/s, each pass as a dot, each bar labelled with its share of no sessions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(report["labels"])
    colors = {"none": "#737373", "lmdb": "#2171b5", "beaker-file": "#d94801"}
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    for i, variant in enumerate(variants):
        med = report["median_requests_per_second"][variant]
        ax.bar(i, med, 0.6, color=colors.get(variant, "#888888"))
        rps = report["requests_per_second"][variant]
        ax.scatter([i + (j - (len(rps) - 1) / 2) * 0.06 for j in range(len(rps))], rps, s=10,
                   color="black", zorder=3, label="one pass" if i == 0 else None)
        share = report["ratio_to_no_sessions"].get(variant, 1.0)
        ax.annotate(f"{med:,.0f} req/s\n{share:.0%}", (i, max(rps + [med])), xytext=(0, 4),
                    textcoords="offset points", ha="center", va="bottom", fontsize=9)
    gate_line = report["median_requests_per_second"]["none"] * report["gate"]["threshold"]
    ax.axhline(gate_line, color="#2171b5", linestyle="--", linewidth=0.8, label="gate: 90% of no sessions")
    ax.set_xticks(range(len(variants)))
    ax.set_xticklabels([report["labels"][v] for v in variants])
    ax.set_ylabel("requests per second (median of passes; higher is better)")
    ax.set_ylim(0, max(max(r) for r in report["requests_per_second"].values()) * 1.2)
    m = report["machine"]
    ax.set_title(
        f"Hello world under HTTP load: {m['workers']}\n{m['load_generator']}; {m['cpu_model']}, "
        f"{m['nproc']} CPUs; {report['passes']} x {report['seconds_per_pass']:g} s interleaved",
        fontsize=9,
    )
    ax.legend(loc="upper right", fontsize=8, frameon=False)
    ax.grid(axis="y", color="#eeeeee")
    ax.set_axisbelow(True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Requests/s under gunicorn: no sessions, fastsess lmdb, Beaker file.",
    )
    parser.add_argument("--quick", action="store_true", help="2 s passes (default 5 s)")
    parser.add_argument("--seconds", type=float, help="length of one pass")
    parser.add_argument("--passes", type=int, default=MIN_PASSES, help=f"at least {MIN_PASSES} (default)")
    parser.add_argument("--client", choices=("auto", "wrk", "python"), default="auto",
                        help="load generator: wrk when installed (auto), or the Python client")
    parser.add_argument("--out", type=Path, default=BENCH_DIR / "results", help="where the JSON and PNG go")
    args = parser.parse_args(argv)
    if args.passes < MIN_PASSES:
        parser.error(f"--passes must be at least {MIN_PASSES}")
    seconds = args.seconds or (2.0 if args.quick else 5.0)
    if not 0.5 <= seconds <= 120:
        parser.error("--seconds must be between 0.5 and 120")
    try:
        if importlib.util.find_spec("gunicorn") is None:
            raise SetupError("gunicorn is not installed: pip install gunicorn (it is in the test extra)")
        generator = load_generator(args.client)
        sys.stderr.write(f"HTTP load: {args.passes} passes x {len(VARIANTS)} apps x {seconds:g} s, "
                         f"{generator.description}\n")
        report = run(args.passes, seconds, min(1.0, seconds / 2), generator)
    except SetupError as exc:
        print(f"http_load: {exc}", file=sys.stderr)
        return 2
    text = render(report)
    sys.stdout.write(text)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "http_load.json"
    json_path.write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    written = [str(json_path)]
    try:
        written.append(str(plot(report, args.out / "http_load.png")))
    except ImportError as exc:
        sys.stderr.write(f"http_load: no chart ({exc}); `pip install matplotlib` draws one\n")
    print("\nwrote " + " and ".join(written))
    return 0 if report["gate"]["status"] == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())
