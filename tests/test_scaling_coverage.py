"""Coverage of the scaling-law intervals on synthetic laws with known parameters (issue #18).

A nominal 95 % interval must contain the true b, c and compute-to-target 92-98 % of the time for
every design the benchmark can produce with >= 5 compute values: 1-3 seeds, 2-10 % multiplicative
noise. The default run checks the hardest design (5 compute values, one seed, 10 % noise) on 60
fits (a few seconds); the percentile bootstrap this replaced measured 67 % (b), 73 % (c) and 77 %
(compute-to-target) there, so the default test fails it. The slow run checks 8 design corners x
2 laws on 300 fits each, and their mean.

An interval whose upper end for b is open (beyond the search bound, reported NaN with a bound hit)
covers every b above its lower end: that is what it says.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pytest

from benchmark.powerlaw import ctt_interval, fit_power_law


@dataclass(frozen=True)
class Law:
    """q(C) = a C^-b + c on n_compute log-spaced values over `decades` decades above C_min."""

    a: float
    b: float
    c: float
    c_min: float
    decades: float

    def grid(self, n_compute: int) -> np.ndarray:
        return self.c_min * np.logspace(0, self.decades, n_compute)

    def __call__(self, C: np.ndarray) -> np.ndarray:
        return self.a * C**-self.b + self.c

    def target(self) -> float:
        """The quality at the grid's geometric middle: a target reached inside the grid."""
        return float(self(np.array(self.c_min * 10 ** (self.decades / 2))))

    def ctt(self, target: float) -> float:
        return (self.a / (target - self.c)) ** (1 / self.b)  # q(C*) = target solved for C*


# the knee inside the grid (the FID-like laws of tests/test_scaling.py: q falls from 2.5x its
# floor to the floor) and a shallow law whose floor lies beyond the grid (the reducible term falls
# from 16x to 2x the floor)
KNEE = Law(a=3e7, b=0.5, c=2.0, c_min=1e14, decades=4.0)
FAR_FLOOR = Law(a=2 * 10**4.5, b=0.3, c=1.0, c_min=1e12, decades=3.0)


def _covers(ci: tuple[float, float], truth: float, open_hi: bool = False) -> bool:
    lo, hi = ci
    return lo <= truth and (truth <= hi or (open_hi and math.isnan(hi)))


def coverage(law: Law, n_compute: int, seeds: int, noise: float, n_fits: int, seed: int = 0) -> dict:
    """Fraction of n_fits synthetic data sets whose 95 % intervals contain the truth."""
    rng = np.random.default_rng(seed)
    C = np.repeat(law.grid(n_compute), seeds)
    T = law.target()
    hits = {"b": 0, "c": 0, "ctt": 0}
    for _ in range(n_fits):
        fit = fit_power_law(C, law(C) * np.exp(rng.normal(0, noise, len(C))))
        hits["b"] += _covers(fit.b_ci, law.b, open_hi="b_hi beyond search bound 20" in fit.bound_hits)
        hits["c"] += _covers(fit.c_ci, law.c)
        hits["ctt"] += _covers(ctt_interval(fit, T), law.ctt(T))
    return {k: v / n_fits for k, v in hits.items()}


def test_intervals_cover_on_the_hardest_design_quickly():
    """5 compute values x 1 seed at 10 % noise (2 residual degrees of freedom). 60 fits: a true 95 %
    coverage measures >= 0.85 with probability ~0.999 per quantity."""
    cov = coverage(KNEE, n_compute=5, seeds=1, noise=0.10, n_fits=60, seed=1)
    assert min(cov.values()) >= 0.85, cov


DESIGNS = [(5, 1, 0.02), (5, 1, 0.10), (5, 2, 0.10), (5, 3, 0.05), (6, 1, 0.05), (6, 3, 0.05),
           (9, 1, 0.10), (9, 3, 0.02)]
LAWS = {"knee": KNEE, "far-floor": FAR_FLOOR}
N_SLOW = 300
# a case's measured coverage is a binomial proportion: se = sqrt(0.95 * 0.05 / 300) = 1.3 %. The
# band 92-98 % is required of the coverage itself, so a case may measure 2 se beyond it; the mean
# over all 16 cases (4800 fits, se 0.3 %) must lie within 93-97 %.
SLACK = 2 * math.sqrt(0.95 * 0.05 / N_SLOW)


@pytest.fixture(scope="module")
def measured() -> dict:
    """Coverage of every (law, design) case, independent noise per case; printed with pytest -s."""
    out = {}
    for j, (name, law) in enumerate(LAWS.items()):
        for k, design in enumerate(DESIGNS):
            out[name, design] = coverage(law, *design, n_fits=N_SLOW, seed=100 * j + k)
            print(f"coverage {name} {design}: {out[name, design]}")
    return out


@pytest.mark.slow
@pytest.mark.parametrize("law", list(LAWS))
@pytest.mark.parametrize("design", DESIGNS, ids=[f"{k}x{s}-{int(n * 100)}pct" for k, s, n in DESIGNS])
def test_intervals_are_calibrated_on_every_design(measured, law, design):
    cov = measured[law, design]
    assert all(0.92 - SLACK <= v <= 0.98 + SLACK for v in cov.values()), cov


@pytest.mark.slow
def test_intervals_are_calibrated_on_average_over_designs(measured):
    for q in ("b", "c", "ctt"):
        mean = float(np.mean([cov[q] for cov in measured.values()]))
        assert 0.93 <= mean <= 0.97, (q, mean)
