"""The README's study numbers: run the shipped study configs and print their verdicts (and,
with --write, put them into README.md between `<!-- readme_numbers:study -->` and
`<!-- /readme_numbers -->`).

    python benchmarks/study_numbers.py                 # run the three studies, print the block
    python benchmarks/study_numbers.py --write         # … and rewrite README.md's block
    python benchmarks/study_numbers.py --reuse DIR     # read the study folders an earlier --out DIR left

Each study runs exactly as `optcmp tune configs/studies/<file>` runs it (its seeds are in its
config: sampler seed 0, tuning seed 0, the final seeds named in its verdict), in a fresh
folder under --out (a temporary one by default), on the CPU with the default engine; the
wall time of each is measured here, and is indicative only on a shared machine.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

STUDIES = ("weight_decay.yaml", "reference.yaml", "workloads.yaml", "digits_cnn.yaml")  # in configs/studies/
BEGIN, END = "<!-- readme_numbers:study -->", "<!-- /readme_numbers -->"


def run(config: Path, out: Path) -> tuple[dict, float]:
    from optcmp.config import load_config
    from optcmp.study_run import run_study

    loaded = load_config(config)
    exp = out / loaded.config.name
    start = time.perf_counter()
    outcome = run_study(loaded, exp, fresh=True)
    seconds = time.perf_counter() - start
    (exp / "study_numbers_seconds.txt").write_text(f"{seconds:.1f}\n")  # for --reuse
    if outcome.verdict is None:
        raise SystemExit(f"{config}: the study ended without a verdict")
    return outcome.verdict, seconds


def block(results: list[tuple[str, dict, float | None]]) -> str:
    import torch

    from optcmp.verdict import verdict_lines

    cpu = platform.processor() or platform.machine()
    lines = [f"Measured with `python benchmarks/study_numbers.py` on {platform.system()} {cpu}, "
             f"{os.cpu_count()} CPU cores (shared with other jobs: times are indicative), torch {torch.__version__}, "
             "the default engine (`auto`: trials that share an architecture train as one vectorized group).", ""]
    for name, verdict, seconds in results:
        took = f", {seconds:.0f} s" if seconds is not None else ""
        lines += [f"**`configs/studies/{name}`**{took}:", ""]
        several = "workloads" in verdict
        dropped = 0
        for line in verdict_lines(verdict):
            if line.startswith("## Across workloads"):
                break  # in its own table below, at round factors τ
            if several and (line.startswith("- no significant difference") or line.startswith("  (n=")):
                dropped += line.startswith("- ")  # a README-sized block: the significant pairs only
                continue
            lines.append(re.sub(r"^## (.*)$", r"*\1*", line))
        if dropped:
            lines += ["", f"({dropped} pairs found no different left out here; verdict.md has every pair.)"]
        if several:
            lines += ["", *profile_table(verdict)]
        lines.append("")
    lines = [line for i, line in enumerate(lines) if line or (i and lines[i - 1])]  # no double blank lines
    return "\n".join(lines).rstrip() + "\n"


TAUS = (1.0, 1.05, 1.1, 1.25, 1.5, 2.0)


def profile_table(verdict: dict) -> list[str]:
    """Across the workloads: mean rank, then ρ(τ) (the share of workloads on which the
    variant's final mean is within a factor τ of the best's) at round factors τ."""
    ratios = verdict["profiles"]["ratios"]
    n = len(ratios)
    lines = ["*Across workloads* (ρ(τ): the share of the workloads on which the variant's final mean is within a "
             "factor τ of the best variant's; ρ(1): the share it wins)", "",
             "| rank | variant | mean rank | " + " | ".join(f"ρ({t:g})" for t in TAUS) + " |",
             "|---|---|---|" + "---|" * len(TAUS)]
    for name in verdict["ranking"]:
        e = verdict["variants"][name]
        rho = [sum(1 for w in ratios if ratios[w][name] is not None and ratios[w][name] <= t) / n for t in TAUS]
        lines.append(f"| {e['rank']} | {name} | {e['mean_rank']:.2f} | " + " | ".join(f"{r:.2f}" for r in rho) + " |")
    return lines


def rewrite(readme: Path, text: str) -> None:
    page = readme.read_text()
    if BEGIN not in page or END not in page.split(BEGIN, 1)[1]:
        raise SystemExit(f"{readme}: no {BEGIN} … {END} block to rewrite")
    head, rest = page.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    readme.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="where the study folders go (default: a temporary folder)")
    parser.add_argument("--reuse", type=Path, help="read finished study folders under this folder, run nothing")
    parser.add_argument("--write", action="store_true", help="rewrite README.md's study block")
    parser.add_argument("--only", choices=STUDIES, action="append", help="run only this config (repeatable)")
    args = parser.parse_args()
    names = args.only or list(STUDIES)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        for name in names:
            if args.reuse:
                from optcmp.config import load_config

                folder = args.reuse / load_config(ROOT / "configs" / "studies" / name).config.name
                timed = folder / "study_numbers_seconds.txt"
                seconds = float(timed.read_text()) if timed.is_file() else None
                results.append((name, json.loads((folder / "verdict.json").read_text()), seconds))
            else:
                verdict, seconds = run(ROOT / "configs" / "studies" / name, out)
                results.append((name, verdict, seconds))
                print(f"{name}: {seconds:.1f} s", file=sys.stderr)
    text = block(results)
    print(text)
    if args.write:
        rewrite(ROOT / "README.md", text)


if __name__ == "__main__":
    main()
