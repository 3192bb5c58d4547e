"""Pure statistics: intervals inside a metric's range, chaos sensitivity, the power of the tests
`compare` makes, and the sequential design behind `seeds: auto`.

No torch and no pandas. scipy is imported inside the functions that need it: the summary,
written at the end of every `optcmp run`, needs only `scipy.special` and only when a config has
several seeds.

Intervals (the `<metric>_ci95_low`/`_high` columns of the summary):
- a metric with a range — losses and norms, times and rates >= 0, accuracies and shares such
  as `near_zero_frac` in [0, 1] — gets the Student t interval for its mean over the seeds,
  intersected with that range ("t, clipped to the range"). The true mean lies in the range, so
  the intersection never removes it: the coverage is exactly the t interval's, and the interval
  still contains the mean shown beside it. Rejected: a t interval on the log scale (an interval
  for the geometric mean, not for the mean the table ranks by; it can miss that mean) and a
  bootstrap percentile interval (with 3 seeds its nominal 95 % covers about 73 % of the time
  for log-normal values, the t interval 92 %; simulated with 2,000 draws). A range is applied
  only where every value respects it (an `nll` loss of unnormalized outputs can be negative).
- a count proportion — `diverged_frac`, k diverged runs out of n — gets the Wilson score
  interval, which is inside [0, 1] by construction and covers well for small n.

Chaos (`sensitivity`, `chaotic` in summary.json): for a config with >= 2 seeds and a probe
run (its first seed with every initial weight moved one ulp up), per metric
    ratio = |metric(probe) - metric(same seed)| / std of the metric over the config's seeds.
A metric is chaotic when ratio >= CHAOS_THRESHOLD and the change is above float rounding
(RESOLUTION relative to the value). CHAOS_THRESHOLD = 0.01 comes from measurement
(benchmarks/chaos_probe.py, plain PyTorch, 10 seeds, every seed as the probe):
- smooth, the linear classifier (AdamW lr 1e-3, batch 32, 20 and 100 epochs): every ratio of
  final, tail-mean and best loss is <= 6.4e-5, i.e. one or two float32 ulps of the loss value
  over its spread, and the change is below 2e-7 of the value;
- chaotic, the reference LayerNorm MLP (Adam/AdamW lr 0.01, wd 0/0.01/0.1, 1000 steps): seed
  0's final train_loss moves by 0.10-3.1 of the seed spread (0.074-1.7 against a 3-seed
  spread); over all 250 probe values (5 configs x final, tail means over the last 10/25/50 %,
  best-so-far x 10 seeds) the median is 0.33, 8 lie below 0.01, 36 below 0.05, 58 below 0.1.
0.01 sits 150x above the smooth values and below 97 % of the chaotic ones (0.05 would miss
14 %, 0.1 23 %). For a metric that
a perturbation fully decorrelates, the ratio is |X - X'|/sd of two independent draws, below
0.01 with probability 0.6 % for normal values: one probe misses a fully chaotic metric rarely.

Sequential design (`seeds: auto`): see `SequentialDesign`.
"""
from __future__ import annotations

import math
import os
import statistics
import sys
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

ALPHA = 0.05
POWER = 0.8
CHAOS_THRESHOLD = 0.01
# A change below this share of the value is float32 rounding (6e-8 per ulp), not chaos.
RESOLUTION = 1e-6
INF = math.inf

UNIT_RANGE = ("near_zero_frac", "diverged_frac")
POSITIVE = ("weight_norm", "steps", "seconds", "steps_per_second", "group_size")
# Metrics a perturbation of the initial weights can move (not steps, timings or group sizes).
CHAOS_METRICS = (
    "train_loss", "train_loss_tail", "best_train_loss", "val_loss", "val_loss_tail", "best_val_loss",
    "val_accuracy", "val_accuracy_tail", "best_val_accuracy", "train_accuracy", "weight_norm", "near_zero_frac",
)
# Where a metric is chaotic, the ones to rank by instead, most stable first. Measured on the
# reference MLP (median ratio over 50 probes): best-so-far 0.21, final 0.17 but with ratios up
# to 220, tail mean of the last 10 % 1.09 (late loss spikes land at chaotic times). So the
# final value is never advised instead of best-so-far: one probe that barely moved it (seed 0
# of weight_decay.yaml: 0.2 % of the spread) says little against a tail up to 220.
ALTERNATIVES = {
    "train_loss": ("best_train_loss", "train_loss_tail"),
    "train_loss_tail": ("best_train_loss", "train_loss"),
    "best_train_loss": ("train_loss_tail",),
    "val_loss": ("best_val_loss", "val_loss_tail"),
    "val_loss_tail": ("best_val_loss", "val_loss"),
    "best_val_loss": ("val_loss_tail",),
    "val_accuracy": ("best_val_accuracy", "val_accuracy_tail"),
    "val_accuracy_tail": ("best_val_accuracy", "val_accuracy"),
    "best_val_accuracy": ("val_accuracy_tail", "val_accuracy"),
}


def metric_range(metric: str) -> tuple[float, float]:
    """The values `metric` can take: [0, 1] for accuracies and shares, [0, inf) for losses, norms,
    counts and rates, unbounded for anything else."""
    if "accuracy" in metric or metric in UNIT_RANGE:
        return 0.0, 1.0
    if "loss" in metric or metric in POSITIVE:
        return 0.0, INF
    return -INF, INF


# --- importing scipy.special while the runs train ---------------------------------------

_warming: threading.Thread | None = None


def warm_up() -> None:
    """Import `scipy.special`, which the summary's intervals need, on a daemon thread while
    the runs train. The import takes about 0.2 s of a core (measured with -X importtime),
    and the summary at the end of `optcmp run` would otherwise wait for it; torch releases
    the GIL inside its kernels, so the import runs beside the training step. A fork waits
    for it first (`_before_fork`): a child forked while another thread imports would start
    with that module's import lock held. An import that fails here fails again, and says
    why, where the summary needs it."""
    global _warming
    if _warming is not None or "scipy.special" in sys.modules:
        return
    _warming = threading.Thread(target=_import_scipy_special, name="optcmp-warm-up", daemon=True)
    _warming.start()


def _import_scipy_special() -> None:
    try:
        import scipy.special  # noqa: F401
    except Exception:  # noqa: BLE001 - said where it is needed
        pass


def _before_fork() -> None:
    if _warming is not None and _warming is not threading.current_thread():
        _warming.join()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork)


def t_quantile(df: float, q: float) -> float:
    from scipy.special import stdtrit  # 0.2 s the first time (see `warm_up`)

    return float(stdtrit(df, q))


def mean_interval(values: Iterable[float], level: float = 0.95, metric: str | None = None,
                  ) -> tuple[float, float, float, float]:
    """(mean, sample std, low, high): the Student t interval of the mean, clipped to the range of
    `metric` where every value is inside it (see the module docstring); NaN where n < 2."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return (math.nan,) * 4
    mean = statistics.fmean(values)
    if n < 2:
        return mean, math.nan, math.nan, math.nan
    std = statistics.stdev(values)
    half = t_quantile(n - 1, (1 + level) / 2) * std / math.sqrt(n)
    low, high = mean - half, mean + half
    if metric is not None:
        lo, hi = metric_range(metric)
        if min(values) >= lo:
            low = max(low, lo)
        if max(values) <= hi:
            high = min(high, hi)
    return mean, std, low, high


def wilson_interval(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion k/n (NaN for n = 0); always inside [0, 1]."""
    if n == 0:
        return math.nan, math.nan
    from scipy.special import ndtri

    z = float(ndtri((1 + level) / 2))
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


# --- chaos ------------------------------------------------------------------------------------

def sensitivity(probe: float, same_seed: float, seed_values: Sequence[float]) -> float:
    """|probe - same_seed| / sample std of `seed_values` (the config's seeds, same_seed among them).
    0 where nothing moved; inf where the perturbation moved a metric the seeds do not."""
    change = abs(probe - same_seed)
    if change == 0:
        return 0.0
    spread = statistics.stdev(seed_values)
    return change / spread if spread > 0 else INF


def is_chaotic(ratio: float | None, probe: float | None, same_seed: float | None,
               threshold: float = CHAOS_THRESHOLD) -> bool:
    """The ratio is at the threshold or above, and the change is more than float rounding."""
    if ratio is None or math.isnan(ratio) or ratio < threshold:
        return False
    if probe is None or same_seed is None:  # one of the two diverged: nothing more chaotic
        return True
    return abs(probe - same_seed) > RESOLUTION * max(abs(probe), abs(same_seed))


def _pct(ratio: float) -> str:
    if math.isinf(ratio):
        return "more than the seed-to-seed spread (the seeds do not vary)"
    pct = ratio * 100
    return f"{pct:.0f} %" if pct >= 10 else f"{pct:.2g} %"


def chaos_sentences(chaos: dict[str, dict], metric: str, available: Sequence[str] = ()) -> list[str]:
    """What the terminal, summary.md and `compare` say about chaos, for the ranked or compared
    `metric` first, then one line listing the other chaotic metrics.

    `chaos`: config_id -> {"seed": probe seed, "sensitivity": {metric: ratio or None},
    "chaotic": [metric, ...]} for the configs that were probed (see summary.chaos_by_config).
    `available`: metrics present in the runs, for the "rank by" advice.
    e.g. "train_loss is chaotic in adam-wd0.1: a 1-ulp perturbation of seed 0 moved it by 40 % of the
    seed-to-seed spread; rank by best_train_loss".
    """
    if not chaos:
        return []
    probed = len(chaos)
    flagged = {c: info for c, info in chaos.items() if metric in info["chaotic"]}
    out = []
    if flagged:
        ratios = [info["sensitivity"].get(metric) for info in flagged.values()]
        finite = sorted(r for r in ratios if r is not None and not math.isinf(r))
        seeds = sorted({info["seed"] for info in flagged.values()})
        seed = f"seed {seeds[0]}" if len(seeds) == 1 else "the first seed"
        if len(finite) < len(ratios) and not finite:
            moved = "made the run diverge where the seed did not, or the reverse"
        else:
            span = _pct(finite[0]) if finite[0] == finite[-1] else f"{_pct(finite[0])} to {_pct(finite[-1])}"
            moved = f"moved it by {span} of the seed-to-seed spread"
        where = f"in {next(iter(flagged))}" if len(flagged) == 1 else f"in {len(flagged)} of {probed} probed configs"
        out.append(f"{metric} is chaotic {where}: a 1-ulp perturbation of {seed} {moved}; "
                   + _advice(chaos, metric, available))
    others = [m for m in CHAOS_METRICS if m != metric and any(m in info["chaotic"] for info in chaos.values())]
    if others:
        out.append("also chaotic (a 1-ulp perturbation moves them by >= "
                   f"{_pct(CHAOS_THRESHOLD)} of the seed-to-seed spread): {', '.join(others)}")
    return out


def _advice(chaos: dict[str, dict], metric: str, available: Sequence[str]) -> str:
    candidates = [m for m in ALTERNATIVES.get(metric, ()) if m in available]
    for m in candidates:
        if not any(m in info["chaotic"] for info in chaos.values()):
            return f"rank by {m}"
    if candidates:
        return (f"so {'is' if len(candidates) == 1 else 'are'} {', '.join(candidates)}: single runs do not reproduce; "
                "compare means over many seeds, not single seeds")
    return "single runs do not reproduce; compare means over many seeds, not single seeds"


# --- power ------------------------------------------------------------------------------------

def t_power(noncentrality: float, df: float, alpha: float = ALPHA) -> float:
    """Power of a two-sided t test at level `alpha`: P(|T| > t_{1-alpha/2}) for T noncentral t."""
    from scipy import stats

    crit = stats.t.ppf(1 - alpha / 2, df)
    # The far tail opposite the noncentrality can come back NaN from scipy (e.g. nct.cdf(-14.1,
    # 2, 8.47)); it equals the near tail of the mirrored distribution, which is finite (0 there).
    upper, lower = stats.nct.sf(crit, df, noncentrality), stats.nct.cdf(-crit, df, noncentrality)
    if math.isnan(lower):
        lower = stats.nct.sf(crit, df, -noncentrality)
    if math.isnan(upper):
        upper = stats.nct.cdf(-crit, df, -noncentrality)
    return float(upper + lower)


def noncentrality_for_power(df: float, alpha: float = ALPHA, power: float = POWER) -> float:
    """The noncentrality at which a two-sided t test with `df` degrees of freedom has `power`."""
    from scipy.optimize import brentq
    from scipy.special import ndtri

    high = float(ndtri(1 - alpha / 2) + ndtri(power)) + 1.0
    while t_power(high, df, alpha) < power:
        high *= 2
    return float(brentq(lambda nc: t_power(nc, df, alpha) - power, 0.0, high, xtol=1e-12))


def detectable_paired(sd_diff: float, n: int, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true mean difference a paired t test over `n` pairs detects with `power`,
    taking the observed SD of the differences as the truth: nc * sd / sqrt(n), df = n - 1."""
    if n < 2 or not sd_diff > 0:
        return math.nan
    return noncentrality_for_power(n - 1, alpha, power) * sd_diff / math.sqrt(n)


def detectable_welch(sd_a: float, n_a: int, sd_b: float, n_b: int, alpha: float = ALPHA,
                     power: float = POWER) -> float:
    """Likewise for Welch's test: noncentrality over the standard error sqrt(sa²/na + sb²/nb),
    Welch–Satterthwaite degrees of freedom from the observed variances."""
    if n_a < 2 or n_b < 2:
        return math.nan
    va, vb = sd_a**2 / n_a, sd_b**2 / n_b
    se = math.sqrt(va + vb)
    if not se > 0:
        return math.nan
    df = (va + vb) ** 2 / (va**2 / (n_a - 1) + vb**2 / (n_b - 1))
    return noncentrality_for_power(df, alpha, power) * se


def min_p_signed_rank(n: int) -> float:
    """The smallest two-sided p-value an exact Wilcoxon signed-rank test of n nonzero pairs reaches."""
    return min(1.0, 2 / 2**n) if n > 0 else 1.0


def min_p_rank_sum(n_a: int, n_b: int) -> float:
    """The smallest two-sided p-value an exact Mann–Whitney U test of n_a and n_b values reaches."""
    return min(1.0, 2 / math.comb(n_a + n_b, n_a)) if n_a and n_b else 1.0


# --- sequential design --------------------------------------------------------------------------

@dataclass(frozen=True)
class SequentialDesign:
    """`seeds: auto`: train `first` seeds, then add `per_round` seeds per round, at most `rounds`
    rounds (looks) in all, planned before the first run.

    At each look every pair is tested at level alpha / rounds (a Bonferroni split of alpha over
    the planned looks), the pairs of one look Holm-corrected together. Guarantee: whatever the
    data and whenever the runner stops, the probability that any pair of configs with the same
    distribution is ever called different, over all looks and pairs, is at most `alpha` (the
    union bound over looks; Holm within a look). With `margin` (a share of the second config's
    mean), a pair is also settled as "equivalent" when the two one-sided tests at level
    alpha / (rounds * pairs) both reject a difference beyond ±margin; the probability of calling
    any pair equivalent whose true difference exceeds the margin is at most `alpha` likewise.
    Bonferroni is conservative against Pocock's constant boundary (for 3 looks and a normal
    statistic its bound is z = 2.394 against Pocock's 2.289) but, unlike Pocock's and
    O'Brien–Fleming's, it holds for t statistics at 3 seeds and for rank tests, where the
    normal-theory boundaries are not exact.
    """

    first: int = 3
    per_round: int = 2
    rounds: int = 4
    alpha: float = ALPHA
    margin: float | None = None

    def __post_init__(self) -> None:
        if self.first < 2 or self.per_round < 1 or self.rounds < 1 or not 0 < self.alpha < 1:
            raise ValueError(f"invalid sequential design {self}")
        if self.margin is not None and not self.margin > 0:
            raise ValueError(f"invalid sequential design {self}: margin must be > 0")

    @property
    def look_alpha(self) -> float:
        return self.alpha / self.rounds

    @property
    def max_seeds(self) -> int:
        return self.seeds_at(self.rounds)

    def seeds_at(self, look: int) -> int:
        """Seeds at look 1, 2, …, rounds."""
        return self.first + (look - 1) * self.per_round

    def look_of(self, n_seeds: int) -> int:
        """The last look that `n_seeds` seeds complete (0 before the first)."""
        if n_seeds < self.first:
            return 0
        return min(self.rounds, 1 + (n_seeds - self.first) // self.per_round)

    def boundary(self, look: int) -> float:
        """|t| a paired t test must reach at `look` (a single pair): t_{1 - alpha/(2·rounds)}(n - 1)."""
        return t_quantile(self.seeds_at(look) - 1, 1 - self.look_alpha / 2)
