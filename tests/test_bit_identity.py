"""Both engines train exactly as they did before the engine redesign: every run's final
weights and metrics.csv equal, bit for bit, the reference that the commit before it
(de51958) wrote for the configs of tests/fixtures/make_engine_reference.py (metrics.csv's
`weight_norm/<layer>` columns renamed since, see `same_column`); the chaos probes the auto
engine adds since do not change them."""
from __future__ import annotations

import sys
from itertools import zip_longest
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).resolve().parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
import make_engine_reference as reference  # noqa: E402

sys.path.remove(str(FIXTURES))


@pytest.fixture(scope="module")
def expected():
    with np.load(FIXTURES / "engine_reference.npz") as z:
        arrays = {k: z[k] for k in z.files}
    recorded = {k.removeprefix("platform/"): str(v) for k, v in arrays.items() if k.startswith("platform/")}
    if recorded != reference.platform():
        pytest.skip(f"the reference bits are of {recorded}, this is {reference.platform()}")
    return arrays


def same_column(new: str | None, old: str | None) -> bool:
    """A metrics.csv column of the reference under its name now: the same, except that a
    layer's `weight_norm/<layer>` names its module's type since (tb/tags.py:
    `weight_norm/0` is `weight_norm/0.Linear`, a parameter of the model itself
    `weight_norm/bias` is `weight_norm/Linear.bias`)."""
    if new is None or old is None or new == old:
        return new == old
    if not (new.startswith("weight_norm/") and old.startswith("weight_norm/")):
        return False
    new, old = new.removeprefix("weight_norm/"), old.removeprefix("weight_norm/")
    kind = new.removeprefix(old + ".") if new.startswith(old + ".") else new.removesuffix("." + old)
    return kind != new and kind.isidentifier()


@pytest.mark.parametrize("engine", reference.ENGINES)
@pytest.mark.parametrize("case", list(reference.CASES))
def test_weights_and_scalars_are_bit_identical_to_the_reference(expected, case, engine, tmp_path):
    got = reference.train(case, engine, tmp_path)
    prefix = f"{case}/{engine}/"
    wanted = {k: v for k, v in expected.items() if k.startswith(prefix)}
    # The chaos probes (summary.chaos: auto) came after the reference: they train where a config's
    # runs are vectorized, never with --engine sequential, and leave their group-mates' bits as they were.
    probes = {k for k in got if k.split("/")[2].endswith("-ulp")}
    assert not probes if engine == "sequential" else bool(probes) == (case in ("regression", "minibatch", "schedule", "batchnorm"))
    assert sorted(set(got) - probes) == sorted(wanted)
    for key, value in wanted.items():
        if key.endswith("metrics.csv"):
            header, _, rows = str(got[key]).partition("\n")
            old_header, _, old_rows = str(value).partition("\n")
            assert rows == old_rows, key
            assert all(same_column(new, old) for new, old in zip_longest(header.split(","), old_header.split(","))), key
        else:
            assert got[key].dtype == value.dtype and got[key].tobytes() == value.tobytes(), key
