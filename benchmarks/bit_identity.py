"""Every shipped config trained with `--engine sequential` and `--engine auto`, compared
bit for bit with a reference made the same way by an earlier commit (issue 16's acceptance:
the redesign leaves every weights.npz as it was).

    # once, from the commit to compare against:
    python benchmarks/bit_identity.py --make /work/ref/engine
    # after each change:
    python benchmarks/bit_identity.py /work/ref/engine
    python benchmarks/bit_identity.py /work/ref/engine --quick     # two small configs only

Prints one line per config and engine: how many runs' weights.npz are bit-identical, and
whether every metrics.csv is too. Exit status 1 when a weights.npz differs or is missing.

Where `auto` differs, the config is trained again with `summary.chaos: off` and compared
once more. The chaos probes (issue 14, after the reference) join their config's vectorized
group, and a larger stack can round differently in float32 on some CPUs: on 2026-12-02, on
an AMD EPYC (2 cores, torch 2.13.0+cpu), real_data's group of 8 against the reference's 6
left 3 of 6 adamw runs 1-2e-7 relative apart (the same size as either engine against
sequential), and lr_schedule's metrics.csv differed; with the probes off both were
identical, weights and metrics.csv. On an Intel Xeon the same day every run was identical
with the probes on. The exit status counts the probe-off comparison.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
QUICK = ["linear_classifier", "real_data"]
ENGINES = ("sequential", "auto")


def train(config: str, engine: str, out: Path, probes: bool = True) -> Path:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    path = ROOT / "configs" / f"{config}.yaml"
    if not probes:  # the same config with summary.chaos off, written beside the output
        doc = yaml.safe_load(path.read_text())
        doc.setdefault("summary", {})["chaos"] = "off"
        path = out.parent / f"{config}-no-probes.yaml"
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
    done = subprocess.run([sys.executable, "-m", "optcmp", "run", str(path),
                           "--engine", engine, "--out", str(out)], env=env, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{config} {engine}: optcmp run exited {done.returncode}\n{done.stdout}{done.stderr}")
    (exp,) = [p for p in out.iterdir() if p.is_dir()]
    return exp


def same_weights(a: Path, b: Path) -> bool:
    with np.load(a) as x, np.load(b) as y:
        return x.files == y.files and all(x[n].dtype == y[n].dtype and x[n].tobytes() == y[n].tobytes() for n in x.files)


def compare(ref: Path, new: Path) -> tuple[int, int, bool, list[str]]:
    """(identical weights, runs, every metrics.csv identical, the runs that differ)."""
    runs = sorted(p.name for p in ref.iterdir() if (p / "result.json").exists())
    same, csv_same, differ = 0, True, []
    for run in runs:
        a, b = ref / run / "weights.npz", new / run / "weights.npz"
        if a.exists() != b.exists() or (a.exists() and not same_weights(a, b)):
            differ.append(run)
        else:
            same += 1
        csv_same &= same_csv((ref / run / "metrics.csv").read_text(), (new / run / "metrics.csv").read_text())
    return same, len(runs), csv_same, differ


def verdict(same: int, n: int, csv_same: bool, differ: list[str]) -> str:
    return (f"weights.npz bit-identical: {same}/{n}; metrics.csv {'identical' if csv_same else 'DIFFERENT'}"
            + (f"; differ: {', '.join(differ)}" if differ else ""))


def same_csv(ref: str, new: str) -> bool:
    """The same rows, bit for bit, under the same columns, but for the `weight_norm/<layer>`
    columns of a reference made before layers named their module's type (`weight_norm/0`
    is `weight_norm/0.Linear` since, `weight_norm/bias` of a bare Linear `weight_norm/Linear.bias`)."""
    (ref_header, _, ref_rows), (header, _, rows) = ref.partition("\n"), new.partition("\n")
    old_cols, new_cols = ref_header.split(","), header.split(",")
    if rows != ref_rows or len(old_cols) != len(new_cols):
        return False
    for old, col in zip(old_cols, new_cols):
        if old == col:
            continue
        old, col = old.removeprefix("weight_norm/"), col.removeprefix("weight_norm/")
        kind = col.removeprefix(old + ".") if col.startswith(old + ".") else col.removesuffix("." + old)
        if kind == col or not kind.isidentifier():
            return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("ref", type=Path, nargs="?", default=Path("/work/ref/engine"))
    parser.add_argument("--make", action="store_true", help="write the reference instead of comparing")
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK)}")
    args = parser.parse_args()
    failed = False
    for config in QUICK if args.quick else CONFIGS:
        for engine in ENGINES:
            where = args.ref / f"{config}-{engine}"
            if args.make:
                train(config, engine, where)
                print(f"{config:18} {engine:10} reference written to {where}")
                continue
            if not where.is_dir():  # a config shipped after the reference was made
                print(f"{config:18} {engine:10} no reference in {args.ref}: skipped")
                continue
            (ref,) = [p for p in where.iterdir() if p.is_dir()]
            with tempfile.TemporaryDirectory() as tmp:
                same, n, csv_same, differ = compare(ref, train(config, engine, Path(tmp) / "run"))
                print(f"{config:18} {engine:10} {verdict(same, n, csv_same, differ)}")
                if engine != "sequential" and (differ or not csv_same):
                    same, n, csv_same, differ = compare(ref, train(config, engine, Path(tmp) / "off", probes=False))
                    print(f"{'':29} with summary.chaos off: {verdict(same, n, csv_same, differ)}")
            failed |= bool(differ)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
