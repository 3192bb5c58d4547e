"""README.md's numbers come from benchmarks/readme_numbers.py: every marked block is what the
script writes from its saved measurements (benchmarks/readme_numbers.json), and those were
measured on the shipped configs as they are now (their seeds). Re-measuring is the script's
job (`python benchmarks/readme_numbers.py`, or `--check`); here nothing trains."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from optcmp.config import load_config
from optcmp.sweep import expand

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
import readme_numbers  # noqa: E402

sys.path.remove(str(ROOT / "benchmarks"))

STORE = json.loads(readme_numbers.STORE.read_text())
README = readme_numbers.README.read_text()


def test_every_block_is_what_the_script_writes_from_its_measurements():
    assert readme_numbers.rewrite(README, STORE) == README
    found = readme_numbers.blocks(README)
    assert set(found) == {"weight-decay", "linear-classifier", "adam-vs-adamw", "real-data", "lr-schedule",
                          "engine-agreement", "histogram-bytes", "speed",
                          "study"}  # the study block: benchmarks/study_numbers.py's, left as it is here
    for name in found:
        readme_numbers.render(name, STORE)  # every block is one the script knows


@pytest.mark.parametrize("name", list(readme_numbers.CONFIGS))
def test_the_measurements_are_of_the_shipped_configs_as_they_are(name):
    config = load_config(ROOT / "configs" / readme_numbers.CONFIGS[name]).config
    found = STORE[name]
    assert found["seeds"] == config.seeds
    specs = expand(config)
    assert found["runs"] == sum(s.role == "run" for s in specs)
    assert found["probes"] <= sum(s.role == "ulp" for s in specs)  # auto: where they are cheap
    assert f"({found['runs']} run" in readme_numbers.render(name, STORE)


def test_the_agreement_block_is_of_ten_seeds_under_both_engines_and_two_thread_counts():
    found = STORE["engine-agreement"]
    assert found["seeds"] == list(range(10)) and found["fewer"] == [0, 1, 2]
    assert list(found["settings"]) == ["vectorized", "sequential", "threads 2", "sequential, threads 2"]
    for key in ("best_train_loss@10", "train_loss@10", "best_train_loss@3", "train_loss@3"):
        pairs = {tuple(s[key]["significant"]) for s in found["settings"].values()}
        assert found[f"same_{key}"] == (len(pairs) == 1)
    assert set(found["run_differences"]["settings"]) == {"sequential", "threads 2", "sequential, threads 2"}


def test_a_rewrite_replaces_only_the_blocks_and_keeps_an_indented_end():
    text = ("intro\n<!-- readme_numbers:lr-schedule -->\nold\n<!-- /readme_numbers -->\nmiddle\n"
            "- item: <!-- readme_numbers:speed -->\n  old\n  <!-- /readme_numbers -->\nend\n")
    store = {"machine": STORE["machine"], "lr-schedule": STORE["lr-schedule"]}
    new = readme_numbers.rewrite(text, store)
    body = readme_numbers.render("lr-schedule", store)
    assert new == text.replace("old\n<!-- /", f"{body}\n<!-- /", 1)
    assert readme_numbers.rewrite(new, store) == new
    assert readme_numbers.blocks(new)["speed"] == "  old\n"  # never measured: left as it is
