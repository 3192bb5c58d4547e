"""The verdict of a study: the tuned variants compared on the final seeds, and with several
workloads, across them.

Per workload: every pair of tuned variants compared by `compare.compare_configs` on the
tuning metric over the final seeds — a paired t test where the seeds pair them (the same
initial weights and data order: the space tunes no model or data key), Welch's otherwise,
and a rank test with every diverged run ranked worst where one diverged; Holm-corrected over
the workload's pairs — each with one sentence a user can quote and the smallest difference
the seeds could detect. The ranking: fewest diverged final runs first, then the mean.

Across workloads (Dolan & Moré, "Benchmarking optimization software with performance
profiles", 2002): the score of variant v on workload w is its final mean, +inf where a final
run diverged (a failure, as in their paper); the ratio r(w, v) is that score over the best
variant's on w (the best's over it, for an accuracy), and the profile ρ_v(τ) is the share of
workloads with r(w, v) ≤ τ: ρ_v(1) is the share v wins, and a profile above another's for
every τ dominates it. Written at each τ where a profile steps (every finite ratio). The
variants are ranked across workloads by their mean rank, ties by ρ_v(1).
"""
from __future__ import annotations

import math
import statistics
from typing import Any

from optcmp.display import significant as fmt_number
from optcmp.display import with_uncertainty

COMPARISON_FIELDS = ("test", "n_a", "n_b", "n_pairs", "diverged_a", "diverged_b", "mean_a", "mean_b", "diff", "rel_diff",
                     "diff_ci95_low", "diff_ci95_high", "p_value", "p_holm", "significant", "detectable_diff",
                     "detectable_rel", "p_diverged_holm", "diverged_significant", "sentence", "power_sentence")


def _clean(value: Any) -> Any:
    """JSON's value: NaN and ±inf as null (JSON has neither), numpy scalars as Python's."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def final_stats(results: list[dict[str, Any]], metric: str) -> dict[str, Any]:
    """The final runs of one arm: mean, std (over the ok runs), n (ok and diverged), diverged."""
    from optcmp.stats import mean_interval

    ok = [r for r in results if r["status"] == "ok" and r["metrics"].get(metric) is not None]
    values = [r["metrics"][metric] for r in ok]
    diverged = sum(r["status"] == "diverged" for r in results)
    mean, std, low, high = (_clean(x) for x in mean_interval(values, metric=metric))
    return {"mean": mean, "std": std, "n": len(ok) + diverged, "diverged": diverged, "ci95_low": low, "ci95_high": high,
            "seeds": [r["seed"] for r in results],
            "values": [r["metrics"].get(metric) if r["status"] == "ok" else None for r in results]}


def _better(row: dict[str, Any], maximize: bool) -> str | None:
    if not row["significant"]:
        return None
    if row["test"] in ("Wilcoxon signed-rank", "Mann-Whitney U"):
        a_first = (row["rank_biserial"] > 0) == maximize
    else:
        a_first = (row["mean_a"] >= row["mean_b"]) == maximize
    return row["config_a"] if a_first else row["config_b"]


def compare_finals(named: dict[str, list[dict[str, Any]]], metric: str, maximize: bool) -> list[dict[str, Any]]:
    """Every pair of names compared on their final runs (`compare.compare_configs`)."""
    import pandas as pd

    from optcmp.compare import compare_configs
    from optcmp.results import flatten

    if len(named) < 2:
        return []
    rows = [{**flatten(r), "config_id": name} for name, results in named.items() for r in results]
    if not any(r["status"] == "ok" for r in rows):
        return []
    frame = compare_configs(pd.DataFrame(rows), metric)
    out = []
    for row in frame.to_dict("records"):
        entry = {"a": row["config_a"], "b": row["config_b"], "better": _better(row, maximize)}
        entry.update({k: _clean(row[k]) for k in COMPARISON_FIELDS})
        out.append(entry)
    return out


def ranking(stats: dict[str, dict[str, Any]], maximize: bool) -> list[str]:
    """Names best first: the smaller share of diverged final runs, then the better mean."""
    def key(name: str) -> tuple:
        s = stats[name]
        share = s["diverged"] / s["n"] if s["n"] else 1.0
        mean = s["mean"] if s["mean"] is not None else math.inf * (-1 if maximize else 1)
        return (share, -mean if maximize else mean, name)

    return sorted(stats, key=key)


def profiles(scores: dict[str, dict[str, float]], maximize: bool) -> dict[str, Any]:
    """Dolan–Moré performance profiles of `scores` (workload → variant → score, inf: failed)."""
    ratios: dict[str, dict[str, float]] = {}
    for workload, by_variant in scores.items():
        finite = [s for s in by_variant.values() if math.isfinite(s)]
        best = (max if maximize else min)(finite) if finite else None
        ratios[workload] = {}
        for variant, s in by_variant.items():
            if best is None or not math.isfinite(s):
                r = math.inf
            elif s == best:
                r = 1.0
            elif (s if maximize else best) <= 0:
                r = math.inf  # a ratio of a score of 0 (or below) is not defined
            else:
                r = best / s if maximize else s / best
            ratios[workload][variant] = r
    variants = list(next(iter(scores.values()))) if scores else []
    taus = sorted({1.0, *(r for rs in ratios.values() for r in rs.values() if math.isfinite(r))})
    n = len(scores)
    rho = {v: [sum(ratios[w][v] <= t for w in ratios) / n for t in taus] for v in variants}
    return {"ratios": {w: {v: (r if math.isfinite(r) else None) for v, r in rs.items()} for w, rs in ratios.items()},
            "taus": taus, "profiles": rho}


def _variant_entry(arm: dict[str, Any], metric: str) -> dict[str, Any]:
    return {"best_trial": arm["best_trial"], "best_params": arm["best_params"], "best_value": _clean(arm["best_value"]),
            "trials": arm["trials"], "final": final_stats(arm["finals"], metric)}


def _section(arms: list[dict[str, Any]], metric: str, maximize: bool, name_of) -> dict[str, Any]:
    """variants, ranking and comparisons of some arms (one workload's, or the only ones)."""
    variants = {name_of(a["arm"]): _variant_entry(a, metric) for a in arms}
    order = ranking({n: v["final"] for n, v in variants.items()}, maximize)
    for rank, name in enumerate(order, start=1):
        variants[name]["rank"] = rank
    comparisons = compare_finals({name_of(a["arm"]): a["finals"] for a in arms}, metric, maximize)
    return {"variants": variants, "ranking": order, "comparisons": comparisons}


def build_verdict(protocol: Any, arms: list[dict[str, Any]]) -> dict[str, Any]:
    """verdict.json's document from each arm's best trial, trial counts and final runs."""
    from optcmp.sweep import short_name

    tune, metric, maximize = protocol.tune, protocol.metric, protocol.maximize
    name_of = lambda arm: arm.variant if arm.variant is not None else short_name(protocol.config.optimizer.name)  # noqa: E731
    head: dict[str, Any] = {"metric": metric, "direction": "maximize" if maximize else "minimize"}
    if protocol.metric_default:
        from optcmp.study import DEFAULT_REASON

        head["metric_reason"] = DEFAULT_REASON
    head.update(sampler=tune.sampler, budget=protocol.budget, prune=tune.prune, sampler_seed=tune.seed,
                tuning_seeds=list(tune.seeds), final_seeds=list(tune.final_seeds))
    workloads = list(dict.fromkeys(a["arm"].workload for a in arms))
    if workloads == [None]:
        return {**head, **_section(arms, metric, maximize, name_of)}
    per = {w: _section([a for a in arms if a["arm"].workload == w], metric, maximize, name_of) for w in workloads}
    names = list(per[workloads[0]]["variants"])
    scores = {w: {n: _score(s["variants"][n]["final"], maximize) for n in names} for w, s in per.items()}
    profile = profiles(scores, maximize)
    wins = {n: profile["profiles"][n][0] for n in names}
    mean_rank = {n: statistics.fmean(per[w]["variants"][n]["rank"] for w in workloads) for n in names}
    order = sorted(names, key=lambda n: (mean_rank[n], -wins[n], n))
    variants = {n: {"rank": i, "mean_rank": mean_rank[n], "wins": wins[n],
                    "best_params": {w: per[w]["variants"][n]["best_params"] for w in workloads},
                    "final": {w: per[w]["variants"][n]["final"] for w in workloads}} for i, n in enumerate(order, start=1)}
    comparisons = [{"workload": w, **c} for w in workloads for c in per[w]["comparisons"]]
    return {**head, "variants": variants, "ranking": order, "comparisons": comparisons, "workloads": per,
            "profiles": profile}


def _score(final: dict[str, Any], maximize: bool) -> float:
    if final["diverged"] or final["mean"] is None:
        return math.inf
    return final["mean"]


# --- words ------------------------------------------------------------------------------


def _seeds(seeds: list[int]) -> str:
    if len(seeds) > 2 and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def protocol_sentence(v: dict[str, Any]) -> str:
    plural = "s" if len(v["tuning_seeds"]) > 1 else ""
    prune = ", hopeless trials stopped by successive halving" if v["prune"] == "halving" else ""
    return (f"Each variant tuned with {v['budget']} trials ({v['sampler']} sampler{prune}) on tuning seed{plural} "
            f"{_seeds(v['tuning_seeds'])}, scored on {v['metric']} ({'higher' if v['direction'] == 'maximize' else 'lower'}"
            f" is better); the best trial of each rerun on final seeds {_seeds(v['final_seeds'])}.")


def _params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k.removeprefix('optimizer.')}={fmt_number(v) if isinstance(v, float) else v}"
                     for k, v in params.items())


def _table(section: dict[str, Any], metric: str) -> list[str]:
    lines = [f"| rank | variant | best trial | its values | final {metric} (mean ± std) | n | diverged | trials "
             "diverged | trials pruned |", "|---|---|---|---|---|---|---|---|---|"]
    for name in section["ranking"]:
        v = section["variants"][name]
        f = v["final"]
        mean = "–" if f["mean"] is None else with_uncertainty(f["mean"], f["std"])
        lines.append(f"| {v['rank']} | {name} | {v['best_trial']} | {_params(v['best_params'])} | {mean} | {f['n']} | "
                     f"{f['diverged']} | {v['trials']['diverged']} of {v['trials']['n']} | {v['trials']['pruned']} |")
    return lines


def _pairs(comparisons: list[dict[str, Any]]) -> list[str]:
    """Each pair's sentence, and under a pair found no different, what its seeds could detect."""
    lines = []
    for c in comparisons:
        lines.append(f"- {c['sentence']}")
        if c.get("power_sentence") and not c["significant"]:
            lines.append(f"  ({c['power_sentence']})")
    return lines


def verdict_lines(v: dict[str, Any]) -> list[str]:
    """The verdict as the terminal prints it and verdict.md holds it (markdown)."""
    lines = [protocol_sentence(v), ""]
    if "workloads" not in v:
        return lines + _table(v, v["metric"]) + [""] + _pairs(v["comparisons"])
    for w, section in v["workloads"].items():
        lines += [f"## {w}", ""] + _table(section, v["metric"]) + [""] + _pairs(section["comparisons"]) + [""]
    p = v["profiles"]
    lines += ["## Across workloads (performance profiles)", "",
              "ρ(τ): the share of workloads on which the variant's final score is within a factor τ of the best "
              "variant's; ρ(1) is the share it wins.", "",
              "| rank | variant | mean rank | " + " | ".join(f"ρ({fmt_number(t)})" for t in p["taus"][:6]) + " |",
              "|---|---|---|" + "---|" * min(6, len(p["taus"]))]
    for name in v["ranking"]:
        e = v["variants"][name]
        lines.append(f"| {e['rank']} | {name} | {fmt_number(e['mean_rank'])} | "
                     + " | ".join(fmt_number(x) for x in p["profiles"][name][:6]) + " |")
    return lines


def verdict_markdown(v: dict[str, Any]) -> str:
    return "# Verdict\n\n" + "\n".join(verdict_lines(v)) + "\n"
