"""The tiering bench's report: the claims checked on a replay's results, the starvation
bound, and the table printed for each trace."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bench.tiering_policies import PoolSpec
from bench.tiering_trace import StarvationSpec


def checks(results: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The claims: ours vs FIFO, LRU and llama-swap, and vs the all-awake bound."""
    ours = results.get("ours")
    if ours is None:
        return {}
    out: dict[str, Any] = {}
    for base in ("fifo", "lru"):
        if base in results:
            out[f"fewer_switches_than_{base}"] = ours["switches"] < results[base]["switches"]
            out[f"lower_p99_than_{base}"] = ours["p99_s"] < results[base]["p99_s"]
    for base in ("llama_swap", "llama_swap_pop"):
        if base in results:
            other = results[base]
            out[f"lower_p99_than_{base}"] = ours["p99_s"] < other["p99_s"]
            out[f"lower_max_wait_than_{base}"] = ours["max_wait_s"] < other["max_wait_s"]
            ratio = ours["throughput_rps"] / other["throughput_rps"]
            out[f"throughput_vs_{base}"] = round(ratio, 4)
            # "At the same throughput": the same trace, and ours completes it no slower.
            out[f"throughput_not_below_{base}"] = ratio >= 0.99
    if "all_awake" in results:
        ratio = ours["throughput_rps"] / results["all_awake"]["throughput_rps"]
        out["throughput_vs_all_awake"] = round(ratio, 4)
        out["throughput_within_20pct"] = ratio >= 0.8
    out["no_violations"] = all(r["violations"] == 0 for r in results.values())
    return out


def starvation_bound_s(pool: PoolSpec, spec: StarvationSpec) -> float:
    """Longest the cold request may wait under ours: ``max_wait_s``, then the drained
    expert's longest request (a full batch), its sleep and the cold expert's wake."""
    prof = pool.profile
    longest = spec.hot_tokens(prof) * prof.tpot_s * (1 + pool.batch_slowdown * pool.max_num_seqs)
    wake = prof.wake_l1_s if pool.sleep_level == 1 else prof.wake_l2_s
    return pool.max_wait_s + longest + prof.sleep_s[pool.sleep_level] + wake


def starvation_checks(
    results: dict[str, dict[str, Any]], pool: PoolSpec, spec: StarvationSpec
) -> dict[str, Any]:
    """Ours bounds the cold request's wait; pure collation makes it wait out the hot stream."""
    out: dict[str, Any] = {"bound_s": round(starvation_bound_s(pool, spec), 2)}
    if "ours" in results:
        out["ours_cold_wait_bounded"] = results["ours"]["cold_max_wait_s"] <= out["bound_s"]
    # The first cold request arrives with the hot streams still running; starving it means
    # waiting until their last request has arrived.
    hot_left = (spec.duration_s - spec.period_s) - spec.cold_at_s[0]
    for base in ("llama_swap", "llama_swap_pop"):
        if base in results:
            out[f"{base}_cold_waits_out_the_hot_stream"] = (
                results[base]["cold_max_wait_s"] >= hot_left
            )
    out["no_violations"] = all(r["violations"] == 0 for r in results.values())
    return out


#: (header, result key, format) of the table's columns.
Column = tuple[str, str, str]

COLUMNS: list[Column] = [
    ("policy", "policy", "{}"), ("K", "budget_experts", "{}"),
    ("done", "completed", "{}"), ("err", "errors", "{}"),
    ("thru r/s", "throughput_rps", "{:.3f}"), ("p50 s", "p50_s", "{:.2f}"),
    ("p99 s", "p99_s", "{:.2f}"), ("wait s", "mean_wait_s", "{:.2f}"),
    ("max wait s", "max_wait_s", "{:.1f}"),
    ("switches", "switches", "{}"), ("hot-hit", "hot_hit_rate", "{:.1%}"),
    ("viol", "violations", "{}"),
]  # fmt: skip

STARVATION_COLUMNS: list[Column] = [
    ("policy", "policy", "{}"), ("done", "completed", "{}"), ("err", "errors", "{}"),
    ("thru r/s", "throughput_rps", "{:.3f}"), ("p50 s", "p50_s", "{:.2f}"),
    ("p99 s", "p99_s", "{:.2f}"), ("max wait s", "max_wait_s", "{:.1f}"),
    ("cold max wait s", "cold_max_wait_s", "{:.1f}"), ("switches", "switches", "{}"),
    ("viol", "violations", "{}"),
]  # fmt: skip


def table(results: dict[str, dict[str, Any]], cols: Sequence[Column] = COLUMNS) -> str:
    """The human-readable comparison."""
    rows = [[h for h, _, _ in cols]]
    for r in results.values():
        rows.append([fmt.format(r[key]) for _, key, fmt in cols])
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
