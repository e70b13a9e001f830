"""The results: a JSON file, a PNG chart (matplotlib, Agg: no display needed) and a text table."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any


def write_json(path: Path, results: dict[str, Any]) -> None:
    path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


OTHER_CORES_NOTICED = 0.3  # more than the kernel's network work and the benchmark itself


def _disturbed(scenario: dict[str, Any]) -> bool:
    """Other processes took CPU during a run (peak or half peak): its figures are pessimistic."""
    return any((scenario.get(r) or {}).get("other_cores", 0) > OTHER_CORES_NOTICED for r in ("peak", "half_peak"))


def _pct(value: float | None) -> float | None:
    return None if value is None else value * 100


def table(results: dict[str, Any]) -> str:
    """The figures, one line per scenario, then the floor and the memory."""
    lines = []
    head = (
        f"{'scenario':<21} {'calls/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}"
        f"   {'half-peak rate':>14} {'p99 ms':>8} {'errors':>6}"
    )
    lines.append(head)
    lines.append("-" * len(head))
    for name, s in results["scenarios"].items():
        peak = s.get("peak", {})
        half = s.get("half_peak") or {}
        lat = peak.get("latency_ms", {})
        hlat = half.get("latency_ms", {})
        errors = ",".join(f"{k}:{v}" for k, v in peak.get("errors", {}).items()) or "0"
        herrors = ",".join(f"{k}:{v}" for k, v in half.get("errors", {}).items()) or ("0" if half else "-")
        half_rate = f"{_fmt(half.get('calls_per_s'))}/{_fmt(half.get('target_rate'))}" if half else "-"
        lines.append(
            f"{name:<21} {_fmt(peak.get('calls_per_s')):>9} {_fmt(lat.get('p50'), 2):>8} {_fmt(lat.get('p95'), 2):>8}"
            f" {_fmt(lat.get('p99'), 2):>8} {errors:>7}   {half_rate:>14} {_fmt(hlat.get('p99'), 2):>8} {herrors:>6}"
        )
    lines.append("")
    head = (
        f"{'CPU per call, ms':<21} {'server':>8} {'pg backends':>12} {'all postgres':>13} {'load gen':>9}"
        f"   {'cores: server':>13} {'postgres':>9} {'load gen':>9} {'other':>6} {'machine busy':>13}"
    )
    lines.append(head)
    lines.append("-" * len(head))
    for name, s in results["scenarios"].items():
        peak = s.get("peak", {})
        lines.append(
            f"{name:<21} {_fmt(peak.get('server_cpu_ms_per_call'), 3):>8}"
            f" {_fmt(peak.get('postgres_backends_cpu_ms_per_call'), 3):>12}"
            f" {_fmt(peak.get('postgres_all_cpu_ms_per_call'), 3):>13} {_fmt(peak.get('client_cpu_ms_per_call'), 3):>9}"
            f"   {_fmt(peak.get('server_cores'), 2):>13} {_fmt(peak.get('postgres_all_cores'), 2):>9}"
            f" {_fmt(peak.get('client_cores'), 2):>9} {_fmt(peak.get('other_cores'), 2):>6}"
            f" {_fmt(_pct(peak.get('machine_busy')), 0):>12}%"
            + ("  <- other work on the machine" if _disturbed(s) else "")
        )
    floors = results.get("floors") or {}
    if floors:
        lines.append("")
        lines.append("floors: pgbench running the service's own transaction of each shape's Identify")
        for name, floor in floors.items():
            label = f"  {floor.get('shape', '?')} ({name})"
            if "ratio" not in floor:
                reason = floor.get("skipped") or floor.get("pgbench", {}).get("error", "?")
                lines.append(f"{label}: not measured ({reason})")
                continue
            pg = floor["pgbench"]
            lat = pg.get("latency_ms", {})
            lines.append(
                f"{label}: service {floor['service_calls_per_s']:.1f} calls/s / pgbench {pg['tps']:.1f} tps = "
                f"{floor['ratio']:.3f}  (pgbench p50 {_fmt(lat.get('p50'), 2)} ms, p99 {_fmt(lat.get('p99'), 2)} ms,"
                f" failed {pg.get('failed', 0)})"
            )
            if "pgbench_backends_cpu_ms_per_tx" in floor:
                service = _fmt(floor.get("service_backends_cpu_ms_per_call"), 3)
                lines.append(
                    f"    Postgres CPU per Identify: its backends {service}"
                    f" ms under the service vs {floor['pgbench_backends_cpu_ms_per_tx']:.3f} ms under pgbench;"
                    f" all of Postgres {_fmt(floor.get('service_postgres_all_cpu_ms_per_call'), 3)}"
                    f" vs {floor['postgres_all_cpu_ms_per_tx']:.3f} ms"
                )
            paced = floor.get("paced") or {}
            if "pgbench_backends_cpu_ms_per_tx" in paced:
                lines.append(
                    f"    pgbench at the service's rate ({paced['rate']:.0f}/s) over its {paced['clients']} connections:"
                    f" its backends {paced['pgbench_backends_cpu_ms_per_tx']:.3f} ms per transaction"
                )
    spread = results.get("server_calls_per_process")
    if spread:
        lines.append("")
        lines.append("calls per server process (its log): " + ", ".join(f"{k} {v}" for k, v in sorted(spread.items())))
    rss = results.get("server_rss")
    if rss:
        lines.append("")
        per = ", ".join(
            f"{p['role']} {p['max_mb']:.0f} MB" for p in sorted(rss["processes"], key=lambda p: p["role"])
        )
        lines.append(f"server RSS (max per process): {per}; total max {rss['total_max_mb']:.0f} MB")
        if rss.get("uss_end_mb"):
            uss = ", ".join(f"{k} {v:.0f} MB" for k, v in rss["uss_end_mb"].items())
            lines.append(f"server USS at the end (unshared memory): {uss}")
    return "\n".join(lines)


def by_size(runs: list[dict[str, Any]]) -> str:
    """Postgres CPU per Identify of each shape, one column per size: the service's backends and
    pgbench's, for the runs of one `python -m bench --people a,b`."""
    sizes = [run["config"]["people"] for run in runs]
    head = f"{'Postgres CPU per Identify, ms':<36}" + "".join(f"{f'{n:,} people':>28}" for n in sizes)
    lines = [head, "-" * len(head)]
    names = [n for n in runs[0].get("floors", {})] or [n for n in runs[0]["scenarios"] if n.startswith("identify")]
    for name in names:
        cells = []
        for run in runs:
            floor = (run.get("floors") or {}).get(name, {})
            service = run["scenarios"].get(name, {}).get("peak", {}).get("postgres_backends_cpu_ms_per_call")
            paced = (floor.get("paced") or {}).get("pgbench_backends_cpu_ms_per_tx")
            cells.append(f"{_fmt(service, 3)} / {_fmt(floor.get('pgbench_backends_cpu_ms_per_tx'), 3)} / {_fmt(paced, 3)}")
        shape = (runs[0].get("floors") or {}).get(name, {}).get("shape", "")
        lines.append(f"{f'{name} ({shape})' if shape else name:<36}" + "".join(f"{c:>28}" for c in cells))
    lines.append(
        "(the service's backends per call / pgbench's per transaction of the same SQL, at full speed / at the"
        " service's rate over as many connections)"
    )
    return "\n".join(lines)


def write_png(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    scenarios = list(results["scenarios"].items())
    names = [n for n, _ in scenarios]
    labels = ["\n".join(textwrap.wrap(n.replace("_", " "), 14)) + (" *" if _disturbed(s) else "") for n, s in scenarios]
    x = list(range(len(names)))
    fig, (ax1, ax3, ax2) = plt.subplots(3, 1, figsize=(max(10, 1.5 * len(names) + 3), 13))
    cfg = results.get("config", {})
    shapes = ", ".join(f"{shape}: {w.get('mode')}" for shape, w in (cfg.get("workspaces") or {}).items())
    # Two lines, anchored at the left edge: one line was wider than the figure and lost its start.
    fig.suptitle(
        f"identity service: {cfg.get('people', 0):,} people per workspace ({shapes or 'one workspace'})\n"
        f"concurrency {cfg.get('concurrency')}, {cfg.get('server_workers')} server worker(s), {cfg.get('cores')} cores, "
        f"{'embedded' if cfg.get('database') == 'embedded' else 'DATABASE_URL'} Postgres {cfg.get('postgres_version', '')}"
        f" - {results.get('started_at', '')}",
        fontsize=10,
        x=0.01,
        ha="left",
    )
    floors = {name: f for name, f in (results.get("floors") or {}).items() if "ratio" in f and name in names}

    # Throughput, with each pgbench floor beside the scenario it mirrors.
    rates = [s.get("peak", {}).get("calls_per_s", 0) for _, s in scenarios]
    bars = ax1.bar(x, rates, width=0.6, color="#4C72B0", label="service (peak, closed loop)")
    ax1.bar_label(bars, fmt="%.0f", fontsize=8)
    if floors:
        fx = [names.index(name) + 0.45 for name in floors]
        fb = ax1.bar(
            fx, [f["pgbench"]["tps"] for f in floors.values()], width=0.3, color="#999999",
            label="pgbench floor, same SQL (service/floor: " + ", ".join(
                f"{f['shape']} {f['ratio']:.2f}" for f in floors.values()) + ")",
        )  # fmt: skip
        ax1.bar_label(fb, fmt="%.0f", fontsize=8)
    ax1.set_ylabel("calls per second")
    ax1.set_xticks(x, labels, fontsize=8)
    ax1.set_title("throughput", fontsize=10)
    ax1.legend(fontsize=8, loc="upper right")
    ax1.grid(axis="y", alpha=0.3)

    # Postgres CPU per call (the service's backends), with pgbench's per transaction beside.
    cpu = [s.get("peak", {}).get("postgres_backends_cpu_ms_per_call") or 0 for _, s in scenarios]
    cb = ax3.bar(x, cpu, width=0.6, color="#DD8452", label="Postgres CPU per call, the service's backends (peak)")
    ax3.bar_label(cb, fmt="%.3f", fontsize=7)
    with_cpu = {n: f for n, f in floors.items() if "pgbench_backends_cpu_ms_per_tx" in f}
    if with_cpu:
        pb = ax3.bar(
            [names.index(n) + 0.45 for n in with_cpu], [f["pgbench_backends_cpu_ms_per_tx"] for f in with_cpu.values()],
            width=0.3, color="#999999", label="per transaction of the same SQL under pgbench",
        )  # fmt: skip
        ax3.bar_label(pb, fmt="%.3f", fontsize=7)
    ax3.set_ylabel("ms of CPU per call")
    ax3.set_xticks(x, labels, fontsize=8)
    ax3.set_title("Postgres CPU per call", fontsize=10)
    ax3.legend(fontsize=8, loc="upper right")
    ax3.grid(axis="y", alpha=0.3)

    # Latency percentiles at peak, and p99 at half the peak rate (open loop).
    width = 0.2
    series = [("p50", "#55A868"), ("p95", "#C4AD66"), ("p99", "#C44E52")]
    for j, (key, color) in enumerate(series):
        values = [s.get("peak", {}).get("latency_ms", {}).get(key, 0) for _, s in scenarios]
        ax2.bar([i + (j - 1.5) * width for i in x], values, width, label=f"{key} at peak", color=color)
    half = [(s.get("half_peak") or {}).get("latency_ms", {}).get("p99", 0) for _, s in scenarios]
    hb = ax2.bar([i + 1.5 * width for i in x], half, width, label="p99 at half peak", color="#8172B2", hatch="//")
    ax2.bar_label(hb, fmt="%.1f", fontsize=7)
    ax2.set_yscale("log")
    ax2.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax2.yaxis.set_minor_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}" if str(v)[0] in "25" else ""))
    ax2.set_ylabel("latency (ms, log scale)")
    ax2.set_xticks(x, labels, fontsize=8)
    ax2.set_title("latency", fontsize=10)
    ax2.legend(fontsize=8, ncol=4, loc="upper left")
    ax2.grid(axis="y", alpha=0.3, which="both")

    if any(_disturbed(s) for _, s in scenarios):
        fig.text(0.01, 0.005, f"* other processes took more than {OTHER_CORES_NOTICED} cores during this scenario's runs: "
                 "its figures are pessimistic", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 0.96))
    fig.savefig(path, dpi=110)
    plt.close(fig)
