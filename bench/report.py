"""Turns the benchmark JSON into a table of µs/request and ratios, the SPEC 9 targets, and a PNG chart.

Input: pytest-benchmark's JSON, or the file `fastsess bench` merges from its C and
pure-Python passes (one list of benchmarks, each tagged with its kernel).

Overhead is a contender's time minus its framework's bare route measured in the
same pass; ratios divide overheads, so "12.0x" on a Beaker row means Beaker adds
twelve times what fastsess adds. Times are the minimum over rounds by default
(each round a batch of requests): on a shared machine, other tenants slow whole
seconds of a run down, and the minimum is the measurement they disturbed least.
The median is shown next to it; `--stat median` bases everything on it instead.

    python bench/report.py bench/results/bench.json [--png chart.png] [--table table.txt]
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

STATS = ("min", "median")
DEFAULT_STAT = "min"

#: Below this (µs), an overhead is measurement noise: ratios against it are shown as lower bounds.
NOISE_FLOOR_US = 0.1

FAMILY_ORDER = ("fastsess", "beaker", "flask", "django", "client")
KERNEL_ORDER = ("c", "python")
BASELINE_ORDER = ("wsgi", "flask", "django")
GROUP_ORDER = ("untouched", "new", "read 300B", "modify 300B", "read 4KB", "modify 4KB")

#: Which fastsess store each other contender is compared with: the first one present in the run.
#: A cookie store and network stores are named ahead of time; rows fall back until they exist.
COUNTERPARTS: dict[tuple[str, str], tuple[str, ...]] = {
    ("beaker", "memory"): ("memory",),
    ("beaker", "file"): ("file",),
    ("beaker", "cookie"): ("cookie", "lmdb"),
    ("beaker", "cookie-aes"): ("cookie-aes", "cookie", "lmdb"),
    ("beaker", "ext:memcached"): ("memcached",),
    ("beaker", "ext:redis"): ("redis",),
    ("client", "pymemcache GET"): ("memcached",),
    ("client", "redis-py GET"): ("redis",),
    ("flask", "cookie"): ("cookie", "lmdb"),
    ("django", "signed-cookies"): ("cookie", "lmdb"),
    ("django", "file"): ("file",),
    ("django", "cache-locmem"): ("memory",),
}


@dataclass
class Row:
    contender: str
    family: str
    store: str
    kernel: str
    scenario: str
    payload: str | None
    group: str
    us: float  # time per request, by the chosen statistic
    median_us: float
    baseline_us: float | None
    overhead_us: float | None
    vs: str | None = None  # the fastsess contender this row is compared with
    ratio: float | None = None  # overhead_us / the vs row's overhead_us
    ratio_is_bound: bool = False  # the vs row's overhead was under the noise floor


@dataclass
class Baseline:
    label: str
    us: float  # the lowest of its measurements, by the chosen statistic
    median_us: float  # the lowest median
    worst_us: float  # the highest of its measurements, by the chosen statistic
    runs: int


@dataclass
class Target:
    what: str
    goal: str
    measured: str
    status: str  # ok | MISS | not measured


def load(path: str | Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def summarize(data: dict, stat: str = DEFAULT_STAT) -> tuple[list[Row], dict[tuple[str, str], Baseline]]:
    """Rows for every session benchmark, and the baselines by (framework, kernel pass), in µs by `stat`."""
    if stat not in STATS:
        raise ValueError(f"stat must be one of {STATS}")
    baselines: dict[tuple[str, str], Baseline] = {}
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if info.get("role") != "baseline":
            continue
        # Timed before each scenario group: keep the least disturbed measurement.
        us, median = b["stats"][stat] * 1e6, b["stats"]["median"] * 1e6
        key = (info["baseline"], info["kernel"])
        if key not in baselines:
            baselines[key] = Baseline(info["contender"], us, median, us, 1)
        else:
            seen = baselines[key]
            seen.us, seen.median_us = min(seen.us, us), min(seen.median_us, median)
            seen.worst_us, seen.runs = max(seen.worst_us, us), seen.runs + 1
    rows = []
    for b in data["benchmarks"]:
        info = b.get("extra_info", {})
        if info.get("role") != "session":
            continue
        baseline = baselines.get((info["baseline"], info["kernel"]))
        base = baseline.us if baseline else None
        us = b["stats"][stat] * 1e6
        group = f"{info['scenario']} {info['payload']}" if info.get("payload") else info["scenario"]
        rows.append(Row(
            contender=info["contender"], family=info["family"], store=info["store"], kernel=info["kernel"],
            scenario=info["scenario"], payload=info.get("payload"), group=group, us=us,
            median_us=b["stats"]["median"] * 1e6,
            baseline_us=base, overhead_us=None if base is None else us - base,
        ))
    _add_ratios(rows)
    rows.sort(key=_row_order(rows))
    return rows, baselines


def _row_order(rows: list[Row], by_group: bool = True):
    """Sort key: scenario group, then fastsess (C, then pure), Beaker, Flask, Django, stores as first run."""
    first_seen: dict[str, int] = {}
    for i, r in enumerate(rows):
        first_seen.setdefault(r.store, i)

    def key(r: Row) -> tuple:
        family = FAMILY_ORDER.index(r.family) if r.family in FAMILY_ORDER else len(FAMILY_ORDER)
        kernel = KERNEL_ORDER.index(r.kernel) if r.family == "fastsess" else 0
        contender = (family, kernel, first_seen[r.store], r.contender)
        if not by_group:
            return contender
        group = GROUP_ORDER.index(r.group) if r.group in GROUP_ORDER else len(GROUP_ORDER)
        return (group, r.group, *contender)

    return key


def _ratio(row: Row, ref: Row) -> tuple[float | None, bool]:
    """row's overhead / ref's; None when row's is within noise of zero, a lower bound when ref's is."""
    if row.overhead_us is None or ref.overhead_us is None or row.overhead_us < NOISE_FLOOR_US:
        return None, False
    bound = ref.overhead_us < NOISE_FLOOR_US
    return row.overhead_us / max(ref.overhead_us, NOISE_FLOOR_US), bound


def _add_ratios(rows: list[Row]) -> None:
    fastsess = {(r.kernel, r.store, r.group): r for r in rows if r.family == "fastsess"}
    reference_kernel = "c" if any(k == "c" for k, _, _ in fastsess) else "python"
    for r in rows:
        ref = None
        if r.family == "fastsess":
            if r.kernel != reference_kernel:
                ref = fastsess.get((reference_kernel, r.store, r.group))
        else:
            for store in COUNTERPARTS.get((r.family, r.store), ()):
                ref = fastsess.get((reference_kernel, store, r.group))
                if ref is not None:
                    break
        if ref is not None:
            r.vs = ref.contender
            r.ratio, r.ratio_is_bound = _ratio(r, ref)


# ---------------------------------------------------------------- targets (SPEC 9)


def check_targets(rows: list[Row], paired: list[dict] | None = None) -> list[Target]:
    """The SPEC 9 targets this run can speak to; ones it cannot are listed as not measured.

    paired: bench/paired.py's results, when the run made them; the network
    stores' GET target is then checked on the interleaved timing as well.
    """
    by = {(r.contender, r.group): r for r in rows}
    out: list[Target] = []

    def overhead(contender: str, group: str, limit: float) -> None:
        r = by.get((contender, group))
        what = f"{contender}, {group}: overhead"
        if r is None or r.overhead_us is None:
            out.append(Target(what, f"<= {limit:g} us", "-", "not measured"))
        else:
            ok = r.overhead_us <= limit
            out.append(Target(what, f"<= {limit:g} us", f"{r.overhead_us:.2f} us", "ok" if ok else "MISS"))

    def faster(slow: str, fast: str, group: str, factor: float) -> None:
        a, b = by.get((slow, group)), by.get((fast, group))
        what = f"{fast} vs {slow}, {group}"
        if a is None or b is None or a.overhead_us is None or b.overhead_us is None:
            out.append(Target(what, f">= {factor:g}x faster", "-", "not measured"))
            return
        ratio = a.overhead_us / max(b.overhead_us, NOISE_FLOOR_US)
        out.append(Target(what, f">= {factor:g}x faster", f"{ratio:.1f}x", "ok" if ratio >= factor else "MISS"))

    def at_most(slow: str, fast: str, group: str, factor: float) -> None:
        a, b = by.get((slow, group)), by.get((fast, group))
        what = f"{slow} vs {fast}, {group}"
        if a is None or b is None or a.overhead_us is None or b.overhead_us is None:
            out.append(Target(what, f"<= {factor:g}x the time", "-", "not measured"))
            return
        ratio = a.overhead_us / max(b.overhead_us, NOISE_FLOOR_US)
        out.append(Target(what, f"<= {factor:g}x the time", f"{ratio:.1f}x", "ok" if ratio <= factor else "MISS"))

    def within_get(contender: str, bare_get: str, group: str, allowance: float) -> None:
        """A network store's read against the same client library's bare GET, timed in the same run."""
        a, b = by.get((contender, group)), by.get((bare_get, group))
        what, goal = f"{contender}, {group}: overhead", f"<= {bare_get} + {allowance:g} us"
        if a is None or b is None or a.overhead_us is None or b.overhead_us is None:
            out.append(Target(what, goal, "-", "not measured"))
            return
        ok = a.overhead_us <= b.overhead_us + allowance
        gap = a.overhead_us - b.overhead_us
        measured = f"{a.overhead_us:.2f} us = GET {'-' if gap < 0 else '+'} {abs(gap):.2f} us"
        out.append(Target(what, goal, measured, "ok" if ok else "MISS"))

    overhead("fastsess-c cookie", "read 300B", 3)
    overhead("fastsess-c cookie", "modify 300B", 4)
    overhead("fastsess-c lmdb", "read 300B", 4)
    overhead("fastsess-c lmdb", "modify 300B", 8)
    overhead("fastsess-c memory", "read 300B", 3)
    for store in ("memory", "file", "lmdb"):
        overhead(f"fastsess-c {store}", "untouched", 0.6)
    for group in ("read 300B", "modify 300B"):
        faster("beaker cookie", "fastsess-c cookie", group, 20)
        faster("beaker memory", "fastsess-c memory", group, 15)
    faster("beaker file", "fastsess-c file", "read 300B", 20)
    faster("beaker file", "fastsess-c lmdb", "read 300B", 20)
    for group in ("new", "modify 300B"):
        faster("beaker file", "fastsess-c file", group, 2)
    for store, beaker in (("memory", "beaker memory"), ("file", "beaker file"), ("lmdb", "beaker file")):
        for group in ("read 300B", "modify 300B"):
            at_most(f"fastsess-py {store}", f"fastsess-c {store}", group, 3)
            faster(beaker, f"fastsess-py {store}", group, 8)
    for store, bare_get in (("memcached", "pymemcache GET"), ("redis", "redis-py GET")):
        within_get(f"fastsess-c {store}", bare_get, "read 300B", 5)
    for p in paired or ():
        if p["b"].endswith("-GET"):  # the store's read against the GET's request, interleaved
            gap = p["gap_us"]
            measured = f"GET {'-' if gap < 0 else '+'} {abs(gap):.2f} us"
            what = f"{' '.join(p['a'].rsplit('-', 1))}, read 300B, interleaved"
            out.append(Target(what, f"<= {p['b'].replace('-GET', ' GET')} + 5 us", measured,
                              "ok" if gap <= 5 else "MISS"))
    return out


# ---------------------------------------------------------------- text


def _fmt_us(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.1f}" if abs(value) >= 100 else f"{value:.2f}"


def _fmt_ratio(r: Row) -> str:
    if r.ratio is None:
        return ""
    return f"{'>=' if r.ratio_is_bound else ''}{r.ratio:.1f}x"


def machine_lines(data: dict) -> list[str]:
    info = data.get("machine_info", {}).get("fastsess", {})
    versions = info.get("versions", {})
    kernels = ", ".join(p.get("kernel", "?") for p in data.get("passes", [])) or info.get("kernel", "?")
    lines = [
        f"machine: {info.get('cpu_model', '?')}, {info.get('nproc', '?')} CPUs, {info.get('platform', '?')}",
        f"python {info.get('python', '?')}; kernel passes: {kernels}; run {data.get('datetime', '?')}",
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
    ]
    sizes = info.get("payload_bytes")
    if sizes:
        lines.append("payloads (compact JSON): " + ", ".join(f"{k} = {v} bytes" for k, v in sizes.items()))
    return lines


def render_table(
    data: dict, rows: list[Row], baselines: dict, targets: list[Target] | None = None, stat: str = DEFAULT_STAT,
) -> str:
    out = [f"Session overhead per request, in us (lower is better; {stat} over rounds)", *machine_lines(data), ""]
    out.append("Baselines, each framework's own route without sessions, timed before each scenario group:")
    width = max([len(b.label) for b in baselines.values()] + [10])
    order = {name: i for i, name in enumerate(BASELINE_ORDER)}
    for (_name, kernel), b in sorted(baselines.items(), key=lambda kv: (order.get(kv[0][0], 99), kv[0])):
        out.append(
            f"  {b.label:<{width}}  {kernel:<6} pass  {_fmt_us(b.us):>8}  (median {_fmt_us(b.median_us)}; "
            f"lowest of {b.runs}, highest {_fmt_us(b.worst_us)})"
        )
    widths = (max([len(r.contender) for r in rows] + [10]), max([len(r.vs or "") for r in rows] + [2]))
    header = (f"  {'contender':<{widths[0]}}  {'us/req':>8}  {'median':>8}  {'overhead':>8}  "
              f"{'vs':<{widths[1]}}  {'ratio':>7}")
    group = None
    for r in rows:
        if r.group != group:
            group = r.group
            out.extend(["", f"[{group}]", header])
        line = (
            f"  {r.contender:<{widths[0]}}  {_fmt_us(r.us):>8}  {_fmt_us(r.median_us):>8}  "
            f"{_fmt_us(r.overhead_us):>8}  {r.vs or '':<{widths[1]}}  {_fmt_ratio(r):>7}"
        )
        out.append(line.rstrip())
    out += [
        "",
        f"us/req: one request through the app ({stat} over rounds; median alongside). overhead: us/req minus",
        "that framework's bare route in the same pass. ratio: this row's overhead / the `vs` row's;",
        "above 1 means slower than fastsess. A `GET` row is the client library's bare GET of a value",
        "the payload's size from the same server: the floor under a network store's read.",
    ]
    paired = data.get("paired")
    if paired:
        out += ["", "Interleaved (bench/paired.py): each pair timed in alternating blocks of requests; the gap is",
                "the median over block pairs. `memory + get()` is the memory store's read followed by the",
                "client's GET alone: the same session work and round trip, so that gap is what the store adds."]
        out += [f"  {p['a']}  vs  {p['b']}: {p['a_us']:.2f} against {p['b_us']:.2f} us, gap {p['gap_us']:+.2f} us "
                f"(quartiles {p['gap_low_us']:+.2f} .. {p['gap_high_us']:+.2f})" for p in paired]
    if targets:
        out += ["", "SPEC 9 targets (one run, this machine):"]
        w, g, m = (max(len(getattr(t, a)) for t in targets) for a in ("what", "goal", "measured"))
        for t in targets:
            out.append(f"  {t.what:<{w}}  {t.goal:<{g}}  {t.measured:>{m}}  {t.status}")
    return "\n".join(out) + "\n"


def rows_as_json(rows: list[Row]) -> list[dict]:
    return [asdict(r) for r in rows]


# ---------------------------------------------------------------- chart

_FASTSESS_COLORS = ["#08306b", "#08519c", "#2171b5", "#4292c6", "#6baed6", "#9ecae1", "#0b7285", "#3bc9db"]
_PALETTES = {
    ("fastsess", "c"): _FASTSESS_COLORS,
    ("fastsess", "python"): _FASTSESS_COLORS,  # same hues, hatched
    ("beaker", ""): ["#7f2704", "#a63603", "#d94801", "#f16913", "#fd8d3c", "#fdbe85"],
    ("flask", ""): ["#525252", "#969696"],
    ("django", ""): ["#3f007d", "#6a51a3", "#9e9ac8", "#dadaeb"],
    ("client", ""): ["#00441b", "#41ab5d"],
}


def plot(data: dict, rows: list[Row], path: str | Path, stat: str = DEFAULT_STAT) -> Path:
    """Grouped bars of overhead per request, log scale: one group per scenario, one bar per contender."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in GROUP_ORDER if any(r.group == g for r in rows)]
    groups += sorted({r.group for r in rows} - set(groups))
    contenders: list[Row] = []
    for r in rows:
        if r.contender not in [c.contender for c in contenders]:
            contenders.append(r)
    contenders.sort(key=_row_order(contenders, by_group=False))
    by = {(r.contender, r.group): r for r in rows}
    floor = NOISE_FLOOR_US / 2

    colors: dict[str, tuple[str, str]] = {}
    used: dict[tuple[str, str], int] = {}
    for c in contenders:
        family_key = (c.family, c.kernel if c.family == "fastsess" else "")
        palette = _PALETTES.get(family_key, ["#888888"])
        i = used.get(family_key, 0)
        used[family_key] = i + 1
        colors[c.contender] = (palette[i % len(palette)], "////" if family_key == ("fastsess", "python") else "")

    # Each group holds only the contenders measured in it (cookie stores sit out the 4 KB
    # payload), centred; bar width and colours stay the same across groups.
    present = {g: [c for c in contenders if (c.contender, g) in by and by[(c.contender, g)].overhead_us is not None]
               for g in groups}
    most = max([len(cs) for cs in present.values()] + [1])
    width = 0.84 / most
    fig, ax = plt.subplots(figsize=(max(12, len(groups) * max(1.9, 0.11 * most) + 4), 7.5), dpi=120)
    heights = []
    labelled: set[str] = set()
    for g_index, g in enumerate(groups):
        start = g_index - width * len(present[g]) / 2
        for i, c in enumerate(present[g]):
            h = max(by[(c.contender, g)].overhead_us, floor)
            heights.append(h)
            color, hatch = colors[c.contender]
            label = c.contender if c.contender not in labelled else None
            labelled.add(c.contender)
            bar = ax.bar(start + width * (i + 0.5), h, width * 0.92, label=label, color=color, hatch=hatch,
                         edgecolor="white" if hatch else color, linewidth=0.4)[0]
            text = f"{h:.0f}" if h >= 100 else f"{h:.1f}" if h > floor else "~0"
            ax.annotate(text, (bar.get_x() + bar.get_width() / 2, h), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=6, rotation=90)
    ax.set_yscale("log")
    ax.set_ylim(min(heights, default=floor) / 2, max(heights, default=1.0) * 6)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g.replace("300B", "(300 B)").replace("4KB", "(4 KB)") for g in groups], fontsize=10)
    for g_index in range(1, len(groups)):
        ax.axvline(g_index - 0.5, color="#dddddd", linewidth=0.8, zorder=0)
    ax.set_ylabel(f"session overhead per request, µs ({stat} over rounds; log scale; lower is better)")
    ax.grid(axis="y", which="major", color="#eeeeee", zorder=0)
    ax.set_axisbelow(True)
    info = data.get("machine_info", {}).get("fastsess", {})
    versions = info.get("versions", {})
    ax.set_title(
        "Session overhead per request: fastsess vs Beaker, Flask and Django\n"
        f"{info.get('cpu_model', '?')}, {info.get('nproc', '?')} CPUs, Python {info.get('python', '?')}; "
        + ", ".join(f"{k} {versions.get(k)}" for k in ("fastsess", "beaker", "flask", "django") if versions.get(k)),
        fontsize=11,
    )
    ax.legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False,
              title="hatched: pure-Python kernel", title_fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Table and chart from the benchmark JSON.")
    parser.add_argument("json", help="pytest-benchmark JSON, or the merged file of `fastsess bench`")
    parser.add_argument("--png", help="write the chart here")
    parser.add_argument("--table", help="write the table here (it is always printed)")
    parser.add_argument("--stat", choices=STATS, default=DEFAULT_STAT,
                        help=f"statistic over rounds (default: {DEFAULT_STAT})")
    args = parser.parse_args(argv)
    data = load(args.json)
    rows, baselines = summarize(data, args.stat)
    text = render_table(data, rows, baselines, check_targets(rows, data.get("paired")), args.stat)
    sys.stdout.write(text)
    if args.table:
        Path(args.table).write_text(text, encoding="utf-8")
    if args.png:
        plot(data, rows, args.png, args.stat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
