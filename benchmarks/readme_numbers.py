"""Every number and claim in README.md that comes from a run, measured on this machine and
written into README's marked blocks, each saying the machine, the engine and the seeds.

    python benchmarks/readme_numbers.py              # measure every block but speed, save, rewrite the blocks
                                                     # (2-core machine: ~1 min for the configs, 4-10 min for
                                                     # the engine agreement's 168 runs, most of it sequential)
    python benchmarks/readme_numbers.py --only weight-decay adam-vs-adamw
    python benchmarks/readme_numbers.py --speed      # also the speed figures (a quiet machine: ~10 min)
    python benchmarks/readme_numbers.py --render     # rewrite the blocks from readme_numbers.json, no training
    python benchmarks/readme_numbers.py --check      # measure again; exit 1 where a block would change
    python benchmarks/readme_numbers.py --agreement-out DIR   # keep (and reuse) seed_agreement.py's runs in DIR
                                                               # (a rerun there trains nothing: ~1.5 min in all)

A block is the text between `<!-- readme_numbers:NAME -->` and `<!-- /readme_numbers -->` in
README.md: the script's, rewritten on every run; the prose around a block says nothing a
block does not measure. The measurements are kept in benchmarks/readme_numbers.json, and
tests/test_readme_numbers.py checks that README's blocks are what `--render` writes from
it, so a number in a block is never edited by hand. The figures depend on the machine (its
kernels decide the last bits, which the chaotic reference MLP amplifies): a rerun elsewhere
rewrites them, with that machine named.

Blocks and what measures them:
- weight-decay, adam-vs-adamw, linear-classifier, real-data, lr-schedule: `optcmp run` of the
  shipped config as shipped (its seeds, the default engine, one torch thread), then the
  summary and `optcmp compare`'s lines as the terminal shows them at 100 columns;
- engine-agreement: benchmarks/seed_agreement.py (10 seeds of adam_vs_adamw.yaml under four
  engine/thread settings);
- speed: with --speed only (timing is for a quiet machine), benchmarks/vectorized_sweep.py
  --no-sequential and benchmarks/histograms.py, whose printed medians and JSON are read
  back; without --speed the last saved figures are kept, or, if none was ever saved, the
  block is left as it is.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # this checkout's optcmp, as `python -m optcmp` from ROOT runs it
README = ROOT / "README.md"
STORE = ROOT / "benchmarks" / "readme_numbers.json"
BLOCK = re.compile(r"(?P<open><!-- readme_numbers:(?P<name>[a-z0-9-]+) -->\n)(?P<body>.*?)"
                   r"(?P<close>[ \t]*<!-- /readme_numbers -->)", re.S)
CONFIGS = {"weight-decay": "weight_decay.yaml", "adam-vs-adamw": "adam_vs_adamw.yaml",
           "linear-classifier": "linear_classifier.yaml", "real-data": "real_data.yaml", "lr-schedule": "lr_schedule.yaml"}
WIDTH = 100  # the terminal the summaries are shown at


# --- measuring --------------------------------------------------------------------------

def machine() -> dict:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or platform.machine()) \
        if Path("/proc/cpuinfo").exists() else platform.processor() or platform.machine()
    return {"cpu": cpu, "cores": os.cpu_count(), "torch": torch.__version__,
            "kernels": torch.backends.cpu.get_cpu_capability(), "python": platform.python_version(),
            "date": _dt.date.today().isoformat()}


def optcmp(*args: str) -> str:
    """`optcmp ARGS…` as a user runs it, from the repository root; its output."""
    done = subprocess.run([sys.executable, "-m", "optcmp", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "COLUMNS": str(WIDTH)})
    if done.returncode != 0:
        sys.exit(f"optcmp {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


def run_config(block: str, out: Path) -> tuple[Path, dict]:
    """Train a shipped config as shipped; its folder and what every block says about its runs."""
    import pandas as pd

    config = ROOT / "configs" / CONFIGS[block]
    printed = optcmp("run", str(config), "--out", str(out))
    name = next(line.split(":", 1)[1].strip() for line in config.read_text().splitlines() if line.startswith("name:"))
    exp = out / name
    runs = pd.read_csv(exp / "runs.csv")
    seeds = sorted(int(s) for s in runs.loc[runs["role"] == "run", "seed"].unique())
    last = next(line for line in printed.splitlines() if " runs: " in line)
    return exp, {"config": f"configs/{CONFIGS[block]}", "seeds": seeds, "engines": sorted(runs["engine"].unique()),
                 "runs": int((runs["role"] == "run").sum()), "probes": int((runs["role"] == "ulp").sum()),
                 "said": last.strip()}


def compare_lines(exp: Path, metric: str | None = None) -> list[str]:
    from optcmp.compare import compare_configs, compare_notes
    from optcmp.compare_view import compare_lines as lines
    from optcmp.summary import read_runs

    runs = read_runs(exp)
    frame = compare_configs(runs, metric)
    return lines(frame, compare_notes(runs, frame["metric"].iloc[0]), exp)


def summary_text(exp: Path) -> str:
    """The summary as the terminal shows it at WIDTH columns, without the timing columns (the
    speed paragraph's business: a loaded machine's seconds say nothing about the optimizers)."""
    from optcmp.display import render_text, summary_view, title
    from optcmp.summary import aggregate, read_run_table

    primary = json.loads((exp / "summary.json").read_text()).get("primary")
    table = aggregate(read_run_table(exp), primary)
    table.columns = [c for c in table.columns if not c.startswith(("seconds_", "steps_per_second_"))]
    return render_text(summary_view(table, WIDTH, title=title(exp.name, table)), WIDTH).rstrip("\n")


def measure_config(block: str, tmp: Path) -> dict:
    exp, found = run_config(block, tmp)
    found["summary"] = summary_text(exp)
    if block == "weight-decay":  # the question: what the larger decay does to the weights
        found["compare"] = {m: compare_lines(exp, m) for m in ("weight_norm", "near_zero_frac", "best_train_loss")}
    elif block == "adam-vs-adamw":
        found["compare"] = {m: compare_lines(exp, m) for m in ("best_train_loss", "train_loss")}
    elif block == "lr-schedule":
        planned = optcmp("plan", str(ROOT / "configs" / CONFIGS[block]))
        found["units"] = [line.strip() for line in planned.splitlines() if line.startswith("  vectorized group")
                          or line.startswith("  sequential:")]
    return found


def measure_agreement(tmp: Path) -> dict:
    import seed_agreement

    return seed_agreement.measure(tmp)


def measure_speed() -> dict:
    """The figures of the speed paragraph, from the benchmarks that make them."""
    bench = ROOT / "benchmarks"
    with tempfile.TemporaryDirectory(prefix="optcmp-readme-") as tmp:
        hist_json = Path(tmp) / "histograms.json"
        subprocess.run([sys.executable, str(bench / "histograms.py"), "--json", str(hist_json)], check=True, cwd=ROOT)
        histograms = json.loads(hist_json.read_text())
    sweep = subprocess.run([sys.executable, str(bench / "vectorized_sweep.py"), "--no-sequential"],
                           capture_output=True, text=True, check=True, cwd=ROOT).stdout
    def seconds(pattern: str) -> float:
        match = re.search(pattern, sweep)
        if match is None:
            sys.exit(f"benchmarks/vectorized_sweep.py printed no line matching {pattern!r}:\n{sweep}")
        return float(match.group(1))
    jobs = int(re.search(r"--engine vectorized --jobs (\d+): ", sweep).group(1))
    started = subprocess.run([sys.executable, "-c", "import time; t = time.perf_counter(); import torch; "
                              "print(time.perf_counter() - t)"], capture_output=True, text=True, check=True)
    return {"jobs": jobs, "vectorized_jobs_n": seconds(rf"--engine vectorized --jobs {jobs}: ([\d.]+) s"),
            "vectorized_jobs_1": seconds(r"--engine vectorized --jobs 1: ([\d.]+) s"),
            "baseline_default_threads": seconds(r"as shipped \(torch's default threads\): ([\d.]+) s"),
            "baseline_one_thread": seconds(r"one torch thread: ([\d.]+) s"),
            "import_torch": float(started.stdout), "histogram_bytes_ratio": histograms["bytes_ratio"],
            "histogram_time_ratio": histograms["time_ratio"]}


# --- rendering --------------------------------------------------------------------------

def _seeds(seeds: list[int]) -> str:
    if len(seeds) == 1:
        return f"seed {seeds[0]}"
    return f"seeds {seeds[0]}–{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else "seeds " + ", ".join(map(str, seeds))


def _where(store: dict, found: dict) -> str:
    m = store["machine"]
    engines = " and ".join(found["engines"])
    probes = f" and {found['probes']} chaos probe{'s' if found['probes'] != 1 else ''}" if found.get("probes") else ""
    runs = f"{found['runs']} run{'s' if found['runs'] != 1 else ''}"
    return (f"*Measured by `benchmarks/readme_numbers.py` on {m['date']}: `optcmp run {found['config']}` "
            f"({runs}{probes}, {_seeds(found['seeds'])}, engine {engines}, one torch thread) "
            f"on {m['cpu']} ({m['cores']} cores, torch {m['torch']}, {m['kernels']} kernels); "
            "timings left out (see Speed).*")


def _terminal(lines: list[str]) -> list[str]:
    """compare's lines (stored whole) as a WIDTH-column terminal shows them."""
    from optcmp.compare_view import wrapped

    return wrapped(lines, WIDTH)


def _code(lines) -> str:
    return "```\n" + "\n".join(lines) + "\n```"


def render(name: str, store: dict) -> str | None:
    """A block's text from the stored measurements; None where there is none (left as it is)."""
    if name in ("speed", "histogram-bytes"):  # both from --speed
        speed = store.get("speed")
        if speed is None:
            return None
        if name == "speed":
            return _render_speed(store, speed)
        return (f"  the reference experiment with every histogram at every step writes {speed['histogram_bytes_ratio']:.0%}\n"
                "  of the event bytes that `add_histogram` writes (`benchmarks/histograms.py`, by\n"
                "  `benchmarks/readme_numbers.py --speed`).")
    found = store.get(name)
    if found is None:
        return None
    if name == "weight-decay":
        said = [f"`optcmp compare runs/weight-decay --metric {m}`:\n\n" + _code(_terminal(lines))
                for m, lines in found["compare"].items()]
        return "\n\n".join([_where(store, found), _code(found["summary"].splitlines()), *said])
    if name == "adam-vs-adamw":
        return "\n\n".join([_where(store, found), "`optcmp compare runs/adam-vs-adamw` (best_train_loss, the default):",
                            _code(_terminal(found["compare"]["best_train_loss"])),
                            "and `--metric train_loss` (the final loss, for contrast):",
                            _code(_terminal(found["compare"]["train_loss"]))])
    if name in ("linear-classifier", "real-data"):
        return "\n\n".join([_where(store, found), _code(found["summary"].splitlines())])
    if name == "lr-schedule":
        return "\n\n".join([_where(store, found), "`optcmp plan configs/lr_schedule.yaml`: " +
                            "; ".join(f"`{u}`" for u in found["units"])])
    if name == "engine-agreement":
        return _render_agreement(store, found)
    raise KeyError(name)


def _render_agreement(store: dict, found: dict) -> str:
    m = store["machine"]
    settings = list(found["settings"])
    lines = []
    for n in (len(found["seeds"]), len(found["fewer"])):
        for metric in ("best_train_loss", "train_loss"):
            key = f"{metric}@{n}"
            what = f"**{n} seeds, {metric}{' (final)' if metric == 'train_loss' else ''}**"
            by = {label: "; ".join(found["settings"][label][key]["significant"]) or "none" for label in settings}
            if found[f"same_{key}"]:
                lines.append(f"- {what}: the same under every setting: {by[settings[0]]}")
            else:
                groups: dict[str, list[str]] = {}
                for label, pairs in by.items():
                    groups.setdefault(pairs, []).append(f"`{label}`")
                lines.append(f"- {what}: not the same: " + "; ".join(f"{', '.join(v)}: {k}" for k, v in groups.items()))
    best, final = (f"{metric}@{len(found['seeds'])}" for metric in ("best_train_loss", "train_loss"))
    configs = sorted(found["settings"][settings[0]][final]["means"])
    rows = ["| setting | " + " | ".join(configs) + " |", "|---" * (len(configs) + 1) + "|"]
    for label in settings:
        means = found["settings"][label]
        cells = [f"{means[best]['means'][c]:.3g} / {means[final]['means'][c]:.3g}" for c in configs]
        rows.append(f"| `{label}` | " + " | ".join(cells) + " |")
    return (f"*Measured by `benchmarks/seed_agreement.py` (run by `benchmarks/readme_numbers.py`) on {m['date']}: "
            f"`optcmp run configs/adam_vs_adamw.yaml --set seeds={len(found['seeds'])}` per setting"
            f"{_options(found)}, then `optcmp "
            f"compare` over {_seeds(found['seeds'])} and over {_seeds(found['fewer'])} (the same runs): the pairs it calls "
            f"significant (paired t, Holm, alpha 0.05), `a < b` where a has the lower mean; on {m['cpu']} "
            f"({m['cores']} cores, torch {m['torch']}).*\n\n" + "\n".join(lines) +
            f"\n\nMeans over {_seeds(found['seeds'])}, best_train_loss / final train_loss:\n\n" + "\n".join(rows) +
            _render_run_differences(found))


def _options(found: dict) -> str:
    """" (`vectorized`: `--engine vectorized`; …)", what each setting's label stands for."""
    options = found.get("options")
    if not options:
        return ""
    return " (" + "; ".join(f"`{label}`: `{opts}`" for label, opts in options.items()) + \
        "; the default engine is vectorized here)"


def _render_run_differences(found: dict) -> str:
    """Run by run: how much a setting moves the same run, against the seeds' spread."""
    diffs = found.get("run_differences")
    if not diffs:
        return ""
    same = found.get("same_runs", {})
    said = []
    for label, by in diffs["settings"].items():
        if label in same:
            continue
        moves = " and ".join(f"its {'final ' if metric == 'train_loss' else ''}{metric} by a median "
                             f"{d['median_rel']:.1%} (at most {d['max_rel']:.0%})" for metric, d in by.items())
        said.append(f"`{label}` moves a run's {moves.removeprefix('its ')}")
    equal = [f"`{label}`'s runs equal `{earlier}`'s bit for bit" for label, earlier in same.items()]
    spread = " and ".join(f"{cv:.0%} ({metric})" for metric, cv in diffs["seed_cv"].items())
    return (f"\n\nRun by run (the same seed and config) against `{diffs['against']}`: " + "; ".join(said) +
            f". Between seeds, the standard deviation is {spread} of the mean (median over the configs)" +
            ("; " + "; ".join(equal) if equal else "") + ".")


def _render_speed(store: dict, s: dict) -> str:
    m = store["machine"]
    return (f"*Measured by `benchmarks/readme_numbers.py --speed` on {s.get('date', m['date'])} "
            f"({m['cpu']}, {m['cores']} cores, torch {m['torch']}): `benchmarks/vectorized_sweep.py --no-sequential` and "
            f"`benchmarks/histograms.py`, medians of whole processes.* The 64-run, 1000-step sweep of the reference "
            f"MLP, with its logging and 64 run folders, takes {s['vectorized_jobs_n']:.1f} s with `--jobs {s['jobs']}` "
            f"and {s['vectorized_jobs_1']:.1f} s with `--jobs 1` (importing torch alone takes {s['import_torch']:.1f} s), "
            f"against {s['baseline_one_thread']:.0f} s for the hand-written loop on one torch thread and "
            f"{s['baseline_default_threads']:.0f} s with torch's default threads. With every histogram at every "
            f"step, the reference experiment takes {s['histogram_time_ratio']:.2f}× the time of the hand-written "
            "run without histograms.")


def rewrite(text: str, store: dict) -> str:
    """README's text with every block the store can render rewritten."""
    def block(match: re.Match) -> str:
        body = render(match["name"], store)
        return match.group(0) if body is None else f"{match['open']}{body}\n{match['close']}"

    return BLOCK.sub(block, text)


def blocks(text: str) -> dict[str, str]:
    return {m["name"]: m["body"] for m in BLOCK.finditer(text)}


# --- the command ------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", nargs="*", choices=[*CONFIGS, "engine-agreement"], help="measure these blocks only")
    ap.add_argument("--speed", action="store_true", help="also measure the speed figures (a quiet machine)")
    ap.add_argument("--render", action="store_true", help="rewrite the blocks from readme_numbers.json only")
    ap.add_argument("--check", action="store_true", help="measure, and exit 1 where a block would change; write nothing")
    ap.add_argument("--agreement-out", type=Path, help="keep seed_agreement.py's runs here (a rerun there trains nothing)")
    args = ap.parse_args()
    store = json.loads(STORE.read_text()) if STORE.exists() else {}
    if not args.render:
        measured_on = store.get("machine", {}).get("date")
        store["machine"] = machine()
        if args.check and measured_on:  # the numbers are checked, not the day
            store["machine"]["date"] = measured_on
        sys.path.insert(0, str(ROOT / "benchmarks"))
        with tempfile.TemporaryDirectory(prefix="optcmp-readme-") as tmp:
            for name in args.only or [*CONFIGS, "engine-agreement"]:
                print(f"measuring {name} …", flush=True)
                where = Path(tmp) / name
                store[name] = measure_agreement(args.agreement_out or where) if name == "engine-agreement" else \
                    measure_config(name, where)
        if args.speed:
            print("measuring speed …", flush=True)
            store["speed"] = {**measure_speed(), "date": store["machine"]["date"]}
    text = README.read_text()
    new = rewrite(text, store)
    if args.check:
        changed = [n for n, body in blocks(new).items() if blocks(text).get(n) != body]
        print("blocks that would change: " + (", ".join(changed) or "none"))
        sys.exit(1 if changed else 0)
    missing = [n for n in ("weight-decay", "adam-vs-adamw", "speed") if n not in blocks(text)]
    if missing:
        sys.exit(f"README.md has no block {', '.join(missing)}: mark it with <!-- readme_numbers:NAME --> … <!-- /readme_numbers -->")
    STORE.write_text(json.dumps(store, indent=2, ensure_ascii=False) + "\n")
    README.write_text(new)
    print(f"rewrote {README} ({', '.join(n for n in blocks(new) if render(n, store) is not None)}); saved {STORE}")


if __name__ == "__main__":
    main()
