"""Power-law fits q(C) = a C^-b + c, compute-to-target and the scaling table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchmark.errors import InputError
from benchmark.scaling import PowerLawFit, compute_to_target, fit_power_law, fit_results, fit_suite

A, B, C_FLOOR = 3e7, 0.5, 2.0


def _synthetic(seeds: int = 3, noise: float = 0.03, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    C = np.repeat(np.logspace(14, 18, 6), seeds)
    q = (A * C**-B + C_FLOOR) * np.exp(rng.normal(0, noise, len(C)))
    return C, q


def test_power_law_fit_recovers_known_parameters_within_bootstrap_ci():
    C, q = _synthetic()
    fit = fit_power_law(C, q, n_boot=60, seed=0)
    assert fit.b_ci[0] <= B <= fit.b_ci[1]
    assert fit.c_ci[0] <= C_FLOOR <= fit.c_ci[1]
    assert abs(fit.b - B) < 0.05 and abs(fit.c - C_FLOOR) < 0.1
    assert abs(math.log(fit.a / A)) < 1.5  # a is the least identified parameter (scales with C^b)
    assert fit.r2 > 0.98 and fit.n_points == len(C)
    # the fitted curve passes through the truth within the noise level over the whole grid
    grid = np.logspace(14, 18, 20)
    assert np.max(np.abs(np.log(fit(grid)) - np.log(A * grid**-B + C_FLOOR))) < 0.05


def test_power_law_fit_is_exact_on_noiseless_data_and_deterministic():
    C = np.logspace(12, 16, 5)
    q = 4e5 * C**-0.4 + 0.5
    fit = fit_power_law(C, q, n_boot=0)
    assert fit.b == pytest.approx(0.4, rel=1e-4) and fit.c == pytest.approx(0.5, rel=1e-3)
    C2, q2 = _synthetic(seeds=2)
    f1, f2 = fit_power_law(C2, q2, n_boot=20, seed=3), fit_power_law(C2, q2, n_boot=20, seed=3)
    assert (f1.b, f1.b_ci, f1.c_ci) == (f2.b, f2.b_ci, f2.c_ci)


def test_single_seed_per_compute_uses_residual_bootstrap_with_nonzero_width():
    C, q = _synthetic(seeds=1)
    fit = fit_power_law(C, q, n_boot=40, seed=0)
    assert fit.b_ci[1] - fit.b_ci[0] > 0


def test_power_law_fit_needs_three_distinct_compute_values():
    with pytest.raises(InputError, match="3 distinct"):
        fit_power_law([1e15, 1e15, 1e16, 1e16], [3.0, 3.1, 2.0, 2.1])


def test_compute_to_target_inverts_the_law_and_is_inf_below_the_floor():
    fit = PowerLawFit(a=A, b=B, c=C_FLOOR, r2=1.0, n_points=0)
    for target in (2.5, 3.0, 10.0):
        C = compute_to_target(fit, target)
        assert A * C**-B + C_FLOOR == pytest.approx(target, rel=1e-9)
    assert compute_to_target(fit, 3.0) == pytest.approx((A / 1.0) ** (1 / B), rel=1e-9)
    assert compute_to_target(fit, C_FLOOR) == math.inf
    assert compute_to_target(fit, 1.0) == math.inf
    # a nearly flat bootstrap replicate (b -> 0) needs astronomically much compute: inf, not an error
    assert compute_to_target(PowerLawFit(a=10.0, b=1e-4, c=0.0, r2=0.0, n_points=3), 9.0) == math.inf


def _results_frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for method, teacher in (("cd", 5e15), ("ect", 0.0)):
        for variant, train in (("s", 1e14), ("m", 1e15), ("l", 1e16), ("xl", 1e17)):
            for seed in (0, 1):
                for metric, law in (("fid", lambda c: 1e4 * c**-0.3 + 2), ("recall", lambda c: 0.5)):
                    v = law(train + teacher) * np.exp(rng.normal(0, 0.02))
                    rows.append(
                        dict(
                            dataset="cifar10",
                            method=method,
                            variant=variant,
                            seed=seed,
                            steps=1,
                            metric=metric,
                            extractor="inception",
                            library="torch-fidelity",
                            train_flops=train,
                            total_flops=train + teacher,
                            value=v,
                        )
                    )
    return pd.DataFrame(rows)


def test_scaling_table_fits_both_axes_only_for_lower_is_better_metrics():
    table = fit_results(_results_frame(), n_boot=10)
    assert set(table["metric"]) == {"fid"}
    assert sorted(zip(table["method"], table["axis"])) == [
        ("cd", "total_flops"),
        ("cd", "train_flops"),
        ("ect", "total_flops"),
        ("ect", "train_flops"),
    ]
    assert (table["n_points"] == 8).all() and (table["n_compute"] == 4).all()
    # the target is a level the methods reach (the median of their best results): finite everywhere
    assert np.isfinite(table["compute_to_target"]).all()
    ect = table[(table["method"] == "ect")].set_index("axis")
    assert ect.loc["train_flops", "b"] == pytest.approx(ect.loc["total_flops", "b"])  # no teacher


def test_default_target_ignores_unfitted_runs_and_other_step_budgets():
    df = _results_frame()
    fid = df[df["metric"] == "fid"]
    median_best = fid.groupby(["method", "variant"])["value"].mean().groupby("method").min().median()
    # a single-budget method (no fit) and a 4-step row of a fitted method, both far worse
    extra = pd.concat([fid.iloc[:1].assign(method="ct", variant="only", value=900.0),
                       fid.iloc[:1].assign(steps=4, value=800.0)])
    table = fit_results(pd.concat([df, extra]), n_boot=5)
    one = table[table["steps"] == 1]
    assert set(one["method"]) == {"cd", "ect"}
    assert one["target"].to_numpy() == pytest.approx(median_best)
    # in_grid says whether compute-to-target was interpolated within the group's compute range
    for _, row in one.iterrows():
        lo_c, hi_c = (1e14, 1e17) if row["axis"] == "train_flops" or row["method"] == "ect" else (1e14 + 5e15,
                                                                                                  1e17 + 5e15)
        assert row["ctt_in_grid"] == (lo_c <= row["compute_to_target"] <= hi_c)


def test_groups_with_fewer_than_three_budgets_are_skipped(tmp_path):
    df = _results_frame()
    df = df[df["variant"].isin(["s", "m"])]
    csv = tmp_path / "results.csv"
    df.to_csv(csv, index=False)
    table = fit_suite(csv, tmp_path / "scaling.csv", n_boot=5)
    assert table.empty
    assert pd.read_csv(tmp_path / "scaling.csv").columns[0] == "dataset"


def test_batched_bootstrap_solver_matches_scipy_least_squares_per_replicate():
    from benchmark.scaling import _fit_batch, _fit_once

    rng = np.random.default_rng(1)
    x = np.repeat([0.1, 0.3, 1.0, 3.0, 10.0], 2)
    L = np.log(2 * x**-0.7 + 0.5)[None, :] + rng.normal(0, 0.05, (40, len(x)))
    P = _fit_batch(x, L, np.array([np.log(2), 0.7, 0.5]))
    Q = np.array([_fit_once(x, row, [(0.7, 0.5)]) for row in L])

    def cost(p):
        return ((L - np.log(np.exp(p[:, :1]) * x ** -p[:, 1:2] + p[:, 2:3])) ** 2).sum(1)

    assert np.all(cost(P) <= cost(Q) + 1e-12)
    np.testing.assert_allclose(P[:, 1], Q[:, 1], atol=1e-5)
    assert (P[:, 1] >= 0).all() and (P[:, 2] >= 0).all()  # bounds hold
