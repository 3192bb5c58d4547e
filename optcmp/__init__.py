"""optcmp: compare optimizers and their hyperparameters on PyTorch models.

    import optcmp
    exp = optcmp.run("configs/weight_decay.yaml", out="runs")   # trains, returns an Experiment
    exp.summary                                                  # summary.csv as a DataFrame
    optcmp.load("runs/weight-decay").compare()                  # a finished folder

`run`, `load` and `Experiment` come from `optcmp.api`, imported on first use, so that
`import optcmp` (and `optcmp --help`) loads neither torch nor pandas.
"""
from optcmp.errors import OptcmpError

__version__ = "0.1.0"
__all__ = ["Experiment", "OptcmpError", "__version__", "load", "run"]
_API = ("run", "load", "Experiment")


def __getattr__(name: str):
    if name in _API:
        from optcmp import api

        return getattr(api, name)
    raise AttributeError(f"module 'optcmp' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
