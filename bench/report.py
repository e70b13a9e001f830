"""The results: a JSON file, a PNG chart (matplotlib, Agg: no display needed) and a text table."""

from __future__ import annotations

import json
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
        f"{'scenario':<18} {'calls/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}"
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
            f"{name:<18} {_fmt(peak.get('calls_per_s')):>9} {_fmt(lat.get('p50'), 2):>8} {_fmt(lat.get('p95'), 2):>8}"
            f" {_fmt(lat.get('p99'), 2):>8} {errors:>7}   {half_rate:>14} {_fmt(hlat.get('p99'), 2):>8} {herrors:>6}"
        )
    lines.append("")
    head = (
        f"{'CPU per call, ms':<18} {'server':>8} {'pg backends':>12} {'all postgres':>13} {'load gen':>9}"
        f"   {'cores: server':>13} {'postgres':>9} {'load gen':>9} {'other':>6} {'machine busy':>13}"
    )
    lines.append(head)
    lines.append("-" * len(head))
    for name, s in results["scenarios"].items():
        peak = s.get("peak", {})
        lines.append(
            f"{name:<18} {_fmt(peak.get('server_cpu_ms_per_call'), 3):>8}"
            f" {_fmt(peak.get('postgres_backends_cpu_ms_per_call'), 3):>12}"
            f" {_fmt(peak.get('postgres_all_cpu_ms_per_call'), 3):>13} {_fmt(peak.get('client_cpu_ms_per_call'), 3):>9}"
            f"   {_fmt(peak.get('server_cores'), 2):>13} {_fmt(peak.get('postgres_all_cores'), 2):>9}"
            f" {_fmt(peak.get('client_cores'), 2):>9} {_fmt(peak.get('other_cores'), 2):>6}"
            f" {_fmt(_pct(peak.get('machine_busy')), 0):>12}%"
            + ("  <- other work on the machine" if _disturbed(s) else "")
        )
    floor = results.get("floor")
    if floor:
        lines.append("")
        if "ratio" in floor:
            pg = floor["pgbench"]
            lat = pg.get("latency_ms", {})
            lines.append(
                f"floor ({floor['scenario']}): service {floor['service_calls_per_s']:.1f} calls/s / pgbench "
                f"{pg['tps']:.1f} tps = {floor['ratio']:.3f}  (pgbench p50 {_fmt(lat.get('p50'), 2)} ms, "
                f"p99 {_fmt(lat.get('p99'), 2)} ms, failed {pg.get('failed', 0)})"
            )
            if "pgbench_backends_cpu_ms_per_tx" in floor:
                lines.append(
                    f"  Postgres CPU per transaction: its backends {floor['pgbench_backends_cpu_ms_per_tx']:.3f} ms "
                    f"under pgbench vs {_fmt(floor.get('service_backends_cpu_ms_per_call'), 3)} ms under the service; "
                    f"all of Postgres {floor['postgres_all_cpu_ms_per_tx']:.3f} vs "
                    f"{_fmt(floor.get('service_postgres_all_cpu_ms_per_call'), 3)} ms"
                )
        else:
            lines.append(f"floor: not measured ({floor.get('skipped') or floor.get('pgbench', {}).get('error', '?')})")
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


def write_png(path: Path, results: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    scenarios = list(results["scenarios"].items())
    names = [n for n, _ in scenarios]
    labels = [n + (" *" if _disturbed(s) else "") for n, s in scenarios]
    x = list(range(len(names)))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(max(9, 1.7 * len(names) + 3), 9))
    cfg = results.get("config", {})
    fig.suptitle(
        f"identity service: {cfg.get('people', '?'):,} people, concurrency {cfg.get('concurrency')}, "
        f"{cfg.get('server_workers')} server worker(s), {cfg.get('cores')} cores, "
        f"{'embedded' if cfg.get('database') == 'embedded' else 'DATABASE_URL'} Postgres {cfg.get('postgres_version', '')}"
        f" - {results.get('started_at', '')}",
        fontsize=10,
    )

    # Throughput, with the pgbench floor beside the scenario it mirrors.
    rates = [s.get("peak", {}).get("calls_per_s", 0) for _, s in scenarios]
    bars = ax1.bar(x, rates, width=0.6, color="#4C72B0", label="service (peak, closed loop)")
    ax1.bar_label(bars, fmt="%.0f", fontsize=8)
    floor = results.get("floor") or {}
    if "ratio" in floor and floor["scenario"] in names:
        i = names.index(floor["scenario"])
        fb = ax1.bar(
            [i + 0.45], [floor["pgbench"]["tps"]], width=0.3, color="#999999",
            label=f"pgbench floor, same SQL (service/floor = {floor['ratio']:.2f})",
        )  # fmt: skip
        ax1.bar_label(fb, fmt="%.0f", fontsize=8)
    ax1.set_ylabel("calls per second")
    ax1.set_xticks(x, labels)
    ax1.set_title("throughput", fontsize=10)
    ax1.legend(fontsize=8, loc="upper right")
    ax1.grid(axis="y", alpha=0.3)

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
    ax2.set_xticks(x, labels)
    ax2.set_title("latency", fontsize=10)
    ax2.legend(fontsize=8, ncol=4, loc="upper left")
    ax2.grid(axis="y", alpha=0.3, which="both")

    if labels != names:
        fig.text(0.01, 0.005, f"* other processes took more than {OTHER_CORES_NOTICED} cores during this scenario's runs: "
                 "its figures are pessimistic", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
