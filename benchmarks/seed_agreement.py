"""Issue 14's acceptance: with 10 seeds, `optcmp compare` of configs/adam_vs_adamw.yaml finds
the same significant pairs whichever engine and thread count trained the runs.

    python benchmarks/seed_agreement.py                  # four settings, 10 seeds (~4 min on a 2-core machine)
    python benchmarks/seed_agreement.py --out DIR        # keep the runs in DIR (a rerun there trains nothing)
    python benchmarks/seed_agreement.py --json out.json

Each setting is one `optcmp run configs/adam_vs_adamw.yaml --set seeds=10` into its own
folder: `--engine vectorized`, `--engine sequential`, `--threads 2` (the default engine,
vectorized here, on two torch threads) and `--engine sequential --threads 2`; `same_runs`
names the settings whose runs' metrics are equal bit for bit to an earlier setting's. Then, per
setting, the pairs `optcmp compare` calls significant (Holm, alpha 0.05) over all 10 seeds
and, for contrast, over the first 3 only (the same runs: a run's numbers depend on its seed,
config, engine and threads, not on the other runs), for the default ranking metric
(best_train_loss, best-so-far) and for the final train_loss, with each config's mean. The
settings change only the last bits of each run (summation order), which the reference MLP
at Adam lr 0.01 amplifies: a conclusion that survives them is one the seeds support. Not a
timing benchmark: any machine load is fine (two torch threads on a busy machine are slow).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's optcmp, as `python -m optcmp` from ROOT runs it
CONFIG = ROOT / "configs" / "adam_vs_adamw.yaml"
SETTINGS = {
    "vectorized": ["--engine", "vectorized"],
    "sequential": ["--engine", "sequential"],
    "threads 2": ["--threads", "2"],
    "sequential, threads 2": ["--engine", "sequential", "--threads", "2"],
}
METRICS = ("best_train_loss", "train_loss")
SEEDS = 10
FEWER = 3  # the shipped config's seeds before issue 14


def optcmp_run(config: Path, out: Path, *options: str) -> Path:
    """`optcmp run CONFIG --out OUT OPTIONS…` as a user runs it; the experiment folder."""
    cmd = [sys.executable, "-m", "optcmp", "run", str(config), "--out", str(out), *options]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    name = next(line.split(":", 1)[1].strip() for line in config.read_text().splitlines() if line.startswith("name:"))
    return out / name


def significant_pairs(runs, metric: str) -> tuple[list[str], dict[str, float], list[str]]:
    """(the pairs compare calls significant, as "better < worse"; the mean per config; every sentence)."""
    from optcmp.compare import compare_configs, higher_is_better

    frame = compare_configs(runs, metric)
    pairs = []
    for r in frame[frame["significant"]].itertuples():
        a_better = (r.mean_a >= r.mean_b) == higher_is_better(metric)
        pairs.append(f"{r.config_a} < {r.config_b}" if a_better else f"{r.config_b} < {r.config_a}")
    means = {**dict(zip(frame["config_a"], frame["mean_a"])), **dict(zip(frame["config_b"], frame["mean_b"]))}
    return sorted(pairs), means, list(frame["sentence"])


def measure(out: Path, settings: dict[str, list[str]] = SETTINGS) -> dict:
    """Train (or resume) every setting into `out`; the figures over SEEDS and over FEWER seeds."""
    from optcmp.summary import read_runs

    found: dict = {"seeds": list(range(SEEDS)), "fewer": list(range(FEWER)), "settings": {},
                   "options": {label: " ".join(options) for label, options in settings.items()}}
    for label, options in settings.items():
        exp = optcmp_run(CONFIG, out / label.replace(", ", "-").replace(" ", "-"), "--set", f"seeds={SEEDS}", *options)
        runs = read_runs(exp)
        found["settings"][label] = {}
        for n in (SEEDS, FEWER):
            for metric in METRICS:
                pairs, means, sentences = significant_pairs(runs[runs["seed"] < n], metric)
                found["settings"][label][f"{metric}@{n}"] = {"significant": pairs, "means": means, "sentences": sentences}
    found["same_runs"] = same_runs(out, settings)
    found["run_differences"] = run_differences(out, settings)
    for key in found["settings"][next(iter(settings))]:
        found[f"same_{key}"] = len({tuple(s[key]["significant"]) for s in found["settings"].values()}) == 1
    return found


def _tables(out: Path, settings: dict[str, list[str]]) -> dict:
    import pandas as pd

    return {label: pd.read_csv(out / label.replace(", ", "-").replace(" ", "-") / "adam-vs-adamw" / "runs.csv")
            .set_index("run_id").sort_index() for label in settings}


def run_differences(out: Path, settings: dict[str, list[str]] = SETTINGS) -> dict:
    """Run by run against the first setting: {setting: {metric: {median_rel, max_rel}}}, the
    relative difference |x - x_first| / x_first of the same run (seed and config, role "run"),
    and {metric: seed_cv}: the median over configs of the between-seed std over the mean (the
    first setting's): how a run's change by the setting compares with the seeds' spread."""
    import numpy as np

    tables = _tables(out, settings)
    first, *others = list(tables)
    base = tables[first][tables[first]["role"] == "run"]
    found: dict = {"against": first, "settings": {}, "seed_cv": {}}
    for metric in METRICS:
        found["seed_cv"][metric] = float(np.median([g.std(ddof=1) / g.mean() for _, g in base.groupby("config_id")[metric]]))
        for label in others:
            other = tables[label].loc[base.index, metric]
            rel = (other - base[metric]).abs() / base[metric].abs()
            found["settings"].setdefault(label, {})[metric] = {"median_rel": float(rel.median()), "max_rel": float(rel.max())}
    return found


def same_runs(out: Path, settings: dict[str, list[str]]) -> dict[str, str]:
    """{setting: the earlier setting whose runs have exactly its metrics}, for the settings that have one."""
    tables = _tables(out, settings)
    metrics = [m for m in ("train_loss", "best_train_loss", "train_loss_tail", "weight_norm", "near_zero_frac")
               if m in tables[next(iter(tables))].columns]
    found, labels = {}, list(tables)
    for i, label in enumerate(labels):
        for earlier in labels[:i]:
            if tables[label].index.equals(tables[earlier].index) and tables[label][metrics].equals(tables[earlier][metrics]):
                found[label] = earlier
                break
    return found


def report(found: dict) -> None:
    for label, earlier in found.get("same_runs", {}).items():
        print(f"{label}: every run's metrics equal {earlier}'s bit for bit")
    diffs = found.get("run_differences")
    if diffs:
        for label, by in diffs["settings"].items():
            said = "; ".join(f"{m} median {d['median_rel']:.2%}, max {d['max_rel']:.1%}" for m, d in by.items())
            print(f"{label} against {diffs['against']}, run by run: {said}")
        print("between seeds (std / mean, median over configs): " +
              "; ".join(f"{m} {cv:.1%}" for m, cv in diffs["seed_cv"].items()))
    for key in found["settings"][next(iter(found["settings"]))]:
        metric, n = key.split("@")
        same = "the same in every setting" if found[f"same_{key}"] else "NOT the same in every setting"
        print(f"\n{n} seeds (0…{int(n) - 1}), {metric}: significant pairs (Holm, alpha 0.05) {same}")
        for label, s in found["settings"].items():
            means = ", ".join(f"{c} {m:.4g}" for c, m in sorted(s[key]["means"].items()))
            print(f"  {label:22s} {'; '.join(s[key]['significant']) or 'none'}")
            print(f"  {'':22s} means: {means}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="keep the runs here (default: a temporary folder)")
    ap.add_argument("--json", type=Path, help="write the figures here as well")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="optcmp-agreement-") as tmp:
        found = measure(args.out or Path(tmp))
    report(found)
    if args.json:
        args.json.write_text(json.dumps(found, indent=2) + "\n")


if __name__ == "__main__":
    main()
