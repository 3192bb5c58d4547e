"""Bounded input (issue 12.3) and empty configs (12.5): files, YAML aliases, nesting and
the number of runs are limited, each refused in one line before anything is built or written."""
from __future__ import annotations

import time

import pytest

from optcmp.config import load_config
from optcmp.errors import OptcmpError
from optcmp.sweep import expand
from optcmp.yamlio import MAX_BYTES, MAX_DEPTH, MAX_NODES
from tests.refusals import refused

CAP = ("allowed: at most max_runs runs (raise it with `max_runs: N` in the config or --set max_runs=N)")


def error_of(path, sets=()) -> str:
    with pytest.raises(OptcmpError) as exc:
        load_config(path, list(sets))
    return str(exc.value)


def timed_refusal(path, out) -> tuple[str, float]:
    start = time.perf_counter()
    message = refused(path, out)
    return message, time.perf_counter() - start


def test_a_32_mb_config_is_refused_at_once(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("name: big\n" + "# padding\n" * (32 * 1024 * 1024 // 10))
    message, seconds = timed_refusal(path, tmp_path / "out")
    assert message == f"{path}: the file is larger than 1024 KiB; allowed: config files of at most {MAX_BYTES:,} bytes"
    assert seconds < 15  # a guard against the hang; the 2 s figure: benchmarks/refusals.py


def test_a_billion_laughs_alias_bomb_is_refused_at_once(tmp_path):
    lines = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 9) + "]")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    message, seconds = timed_refusal(path, tmp_path / "out")
    assert message == (f"{path}:6: f: the document expands to more than {MAX_NODES:,} values (aliases count what "
                       f"they repeat); allowed: at most {MAX_NODES:,}")
    assert seconds < 15  # a guard against the hang; the 2 s figure: benchmarks/refusals.py


def test_a_sweep_of_ten_million_runs_is_refused_before_expanding(tmp_path):
    lrs = ", ".join(f"{1 + i}.0e-6" for i in range(1000))
    decays = ", ".join(f"{i}.0e-5" for i in range(1000))
    path = tmp_path / "huge.yaml"
    path.write_text(f"seeds: 10\nsummary: {{chaos: off}}\nsweep:\n  optimizer.lr: [{lrs}]\n"
                    f"  optimizer.weight_decay: [{decays}]\n")
    message, seconds = timed_refusal(path, tmp_path / "out")
    assert message == (f"{path}:3: sweep: expands to 10,000,000 runs (1,000,000 configs × 10 seeds), more than "
                       f"max_runs (10,000); {CAP}")
    assert seconds < 15  # a guard against the hang; the 2 s figure: benchmarks/refusals.py


def test_a_billion_seeds_are_refused(write_config):
    path = write_config("seeds: 1000000000\n")  # summary.chaos auto: the cap counts the probe the planner may drop
    assert error_of(path) == (f"{path}:1: seeds: expands to 1,000,000,001 runs (1 config × 1,000,000,000 seeds "
                              f"+ 1 chaos probe), more than max_runs (10,000); {CAP}")


def test_chaos_probes_count_toward_the_cap(write_config):
    path = write_config("max_runs: 7\nseeds: 3\nsummary: {chaos: on}\nsweep: {optimizer.lr: [0.1, 0.01]}\n")
    assert error_of(path) == (f"{path}:4: sweep: expands to 8 runs (2 configs × 3 seeds + 2 chaos probes), more than "
                              f"max_runs (7); {CAP}")
    specs = expand(load_config(path, ["max_runs=8"]).config)
    assert [s.role for s in specs].count("ulp") == 2 and len(specs) == 8


def test_max_runs_raises_the_cap(write_config):
    path = write_config("max_runs: 5\nseeds: 3\nsummary: {chaos: off}\nsweep: {optimizer.lr: [0.1, 0.01]}\n")
    assert error_of(path) == (f"{path}:4: sweep: expands to 6 runs (2 configs × 3 seeds), more than max_runs (5); {CAP}")
    assert len(expand(load_config(path, ["max_runs=6"]).config)) == 6
    assert error_of(path, ["seeds=1000"]) == (f"{path}:4: sweep: expands to 2,000 runs (2 configs × 1,000 seeds), "
                                              f"more than max_runs (5); {CAP}")
    path = write_config("max_runs: 5\nsummary: {chaos: off}\n")
    assert error_of(path, ["seeds=1000"]) == ("--set seeds=1000: seeds: expands to 1,000 runs (1 config × 1,000 seeds), "
                                              f"more than max_runs (5); {CAP}")


def test_deep_nesting_is_refused(tmp_path):
    path = tmp_path / "deep.yaml"
    path.write_text("model:\n  hidden: " + "[" * 5000 + "]" * 5000 + "\n")
    assert refused(path, tmp_path / "out") == (
        f"{path}:2: model.hidden[0][0][0][0][0][0][0][0][0]…: nested more than {MAX_DEPTH} levels deep; "
        f"allowed: at most {MAX_DEPTH} levels of mappings and lists")


def test_aliases_within_bounds_still_work(write_config):
    path = write_config("optimizer: &opt {name: sgd, lr: 0.1}\nsweep:\n  optimizer: [*opt, {name: adam}]\n")
    assert [s.run_id for s in expand(load_config(path).config)] == ["sgd_lr0.1-s0", "adam-s0"]


@pytest.mark.parametrize("text, message", [
    ("a: &a [1, *a]\n", "1: a[1]: alias *a refers to a value that contains it; allowed: aliases of finished values"),
    ("a: [1]\nb: *c\n", "2: b: alias *c is not defined; allowed: aliases of anchors (&c) given before them"),
])
def test_bad_aliases(write_config, text, message):
    path = write_config(text)
    assert error_of(path) == f"{path}:{message}"


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "---\n"])
def test_an_empty_config_is_an_error(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert refused(path, tmp_path / "out") == f"{path}: the config is empty; give at least one key (see configs/ for examples)"


def test_a_config_that_is_not_text(tmp_path):
    path = tmp_path / "binary.yaml"
    path.write_bytes(b"name: x\n\xff\xfe\n")
    assert refused(path, tmp_path / "out") == f"{path}: not a text file (byte 8 is not UTF-8); allowed: YAML in UTF-8"


def test_a_config_that_is_a_list(write_config, tmp_path):
    path = write_config("- name: x\n")
    assert refused(path, tmp_path / "out") == (
        f"{path}: the config must be a mapping of keys (name, model, data, …), got [{{name: 'x'}}]")
