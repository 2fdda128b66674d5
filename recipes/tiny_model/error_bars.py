"""Error bars of the comparison: the standard error of one run, the spread over seeds.

One run scores n evaluation pairs. Its standard error:

- a scorer dimension (each clip's value in [0, 1], mean p over the n pairs): the binomial
  standard error √(p(1 − p)/n). For prompt accuracy, 0 or 1 per clip, it is the standard error of
  the rate; for the other dimensions, probabilities in [0, 1], it bounds it from above (a
  variable in [0, 1] with mean p has variance ≤ p(1 − p)), and it needs only the mean, so it
  applies to stored aggregates too;
- PSNR and SSIM against FP: the standard error of the mean over the pairs, s/√n with s the
  sample standard deviation (ddof 1).

Two methods scored on the same n pairs are compared per pair: with d_i = a_i − b_i, the paired
difference is d̄ = mean(d_i) and its standard error s_d/√n (s_d the sample standard deviation of
the d_i, ddof 1) — smaller than √(SE_a² + SE_b²) when the methods succeed and fail on the same
pairs. For a method with several seeds, a_i is the mean over its seeds of pair i's value.

Several runs of one method differ only in their QAT seed: a model named ``<group>-seed<k>``
belongs to ``<group>`` (``qvgen-w4a4-seed2`` to ``qvgen-w4a4``), any other name is a group of
its own. Over the runs of a group: the mean and the sample standard deviation (ddof 1; none for
a single run).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

_SEEDED = re.compile(r"^(?P<group>.+)-seed(?P<seed>\d+)$")


def binomial_stderr(p: float, n: int) -> float:
    """√(p(1 − p)/n) of a rate p in [0, 1] over n ≥ 1 pairs."""
    if n < 1:
        raise ValueError(f"the standard error needs n ≥ 1 pairs, got {n}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"a binomial rate lies in [0, 1], got {p}")
    return math.sqrt(p * (1.0 - p) / n)


def mean_stderr(values: Sequence[float]) -> float:
    """s/√n of the mean of ``values`` (n ≥ 2), s the sample standard deviation."""
    if len(values) < 2:
        raise ValueError(f"the standard error of a mean needs ≥ 2 values, got {len(values)}")
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


def seed_group(name: str) -> tuple[str, int | None]:
    """(group, seed) of a model name: ``qvgen-w4a4-seed2`` → (``qvgen-w4a4``, 2)."""
    match = _SEEDED.match(name)
    if match is None:
        return name, None
    return match["group"], int(match["seed"])


def group_by_seed(names: Iterable[str]) -> dict[str, list[str]]:
    """Group names in first-seen order; within a group, runs in seed order."""
    groups: dict[str, list[tuple[int, str]]] = {}
    for name in names:
        group, seed = seed_group(name)
        groups.setdefault(group, []).append((-1 if seed is None else seed, name))
    return {group: [n for _, n in sorted(runs)] for group, runs in groups.items()}


@dataclass(frozen=True)
class Spread:
    """A quantity over the runs of a group: their mean, sample SD (None for one run), count."""

    mean: float
    std: float | None
    runs: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Spread:
        if not values:
            raise ValueError("a spread needs at least one run")
        std = float(np.std(values, ddof=1)) if len(values) > 1 else None
        return cls(float(np.mean(values)), std, len(values))


def median_run(values: dict[str, float]) -> str:
    """The run of median value: sorted by (value, name), the ⌊(n − 1)/2⌋-th (for 3 runs the
    middle one; for an even count the lower of the middle two)."""
    if not values:
        raise ValueError("the median run of no runs")
    ranked = sorted(values, key=lambda name: (values[name], name))
    return ranked[(len(ranked) - 1) // 2]


@dataclass(frozen=True)
class PairedDifference:
    """mean(a_i − b_i) over n pairs and its standard error s_d/√n (module docstring)."""

    mean: float
    stderr: float
    pairs: int

    @property
    def in_stderrs(self) -> float:
        """d̄ / SE: how many standard errors the difference is (±inf for an exact one, 0 for 0)."""
        if self.stderr > 0:
            return self.mean / self.stderr
        return 0.0 if self.mean == 0 else math.copysign(math.inf, self.mean)

    @classmethod
    def of(cls, a: Sequence[float], b: Sequence[float]) -> PairedDifference:
        if len(a) != len(b):
            raise ValueError(f"paired values need the same pairs: {len(a)} against {len(b)}")
        d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
        return cls(float(d.mean()), mean_stderr(list(d)), len(d))


def mean_over_seeds(runs: Sequence[Sequence[float]]) -> list[float]:
    """Per pair, the mean over the runs (seeds) of one method; every run scored the same pairs."""
    if not runs or len({len(r) for r in runs}) != 1:
        raise ValueError("the runs of a method must score the same, non-zero number of pairs")
    return [float(v) for v in np.mean(np.asarray(runs, dtype=np.float64), axis=0)]
