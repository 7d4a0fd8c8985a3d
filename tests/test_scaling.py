"""Power-law fits q(C) = a C^-b + c, compute-to-target and the scaling table."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from benchmark.errors import InputError
from benchmark.powerlaw import NOTE_FEW, PowerLawFit, compute_to_target, ctt_interval, fit_power_law
from benchmark.scaling import compare_exponents, fit_results, fit_suite, frontier_cells, model_size

A, B, C_FLOOR = 3e7, 0.5, 2.0


def _synthetic(seeds: int = 3, noise: float = 0.03, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    C = np.repeat(np.logspace(14, 18, 6), seeds)
    q = (A * C**-B + C_FLOOR) * np.exp(rng.normal(0, noise, len(C)))
    return C, q


def test_power_law_fit_recovers_known_parameters_within_profile_ci():
    C, q = _synthetic()
    fit = fit_power_law(C, q)
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
    fit = fit_power_law(C, q, intervals=False)
    assert fit.b == pytest.approx(0.4, rel=1e-4) and fit.c == pytest.approx(0.5, rel=1e-3)
    C2, q2 = _synthetic(seeds=2)
    f1, f2 = fit_power_law(C2, q2), fit_power_law(C2, q2)
    assert (f1.b, f1.b_ci, f1.c_ci) == (f2.b, f2.b_ci, f2.c_ci)


def test_profile_interval_ends_sit_at_the_t_quantile_of_the_profile():
    """At each end of b's interval the profile t statistic equals t_{n-3, 0.975} (Bates & Watts
    §6.1), and the interval is wider than the Wald one where the law bends (b's upper side)."""
    from scipy import stats

    C, q = _synthetic(seeds=1, noise=0.05)
    fit = fit_power_law(C, q)
    pr = fit.profile
    tq = stats.t.ppf(0.975, len(C) - 3)
    for end in fit.b_ci:
        tau = math.sqrt((pr.rss_b(np.array([end]))[0] - pr.rss0) / pr.s2)
        assert tau == pytest.approx(tq, rel=0.02)
    for end in fit.c_ci:
        tau = math.sqrt((pr.rss_c(np.array([end]))[0] - pr.rss0) / pr.s2)
        assert tau == pytest.approx(tq, rel=0.02)


def test_fewer_than_five_compute_values_give_an_estimate_and_no_interval():
    C, q = _synthetic(seeds=3)
    keep = np.isin(C, np.unique(C)[:4])
    fit = fit_power_law(C[keep], q[keep])
    assert np.isfinite([fit.a, fit.b, fit.c]).all()
    assert np.isnan([*fit.a_ci, *fit.b_ci, *fit.c_ci]).all()
    assert fit.interval_note == NOTE_FEW and fit.n_compute == 4
    assert ctt_interval(fit, 3.0) == pytest.approx((math.nan, math.nan), nan_ok=True)


def test_an_exponent_beyond_the_search_bound_is_reported_as_a_bound_hit_not_a_value():
    # a step: the error drops 5x between compute values 1 % apart (b = 20 gives only 1.01^20 = 1.2x)
    C = 1e15 * np.array([1.0, 1.01, 1.02, 1.03, 1.04])
    q = np.array([10.0, 2.0, 2.0, 2.0, 2.0]) * np.array([1.0, 1.01, 0.99, 1.0, 1.005])
    fit = fit_power_law(C, q)
    assert math.isnan(fit.b) and math.isnan(fit.a) and math.isnan(compute_to_target(fit, 5.0))
    assert fit.bound_hits == ("b at search bound 20",)
    # an interval reaching the bound names the bound instead of ending there
    rng = np.random.default_rng(5)
    C = np.logspace(14, 18, 5)
    fits = [fit_power_law(C, (A * C**-B + C_FLOOR) * np.exp(rng.normal(0, 0.1, 5))) for _ in range(8)]
    open_ended = [f for f in fits if "b_hi beyond search bound 20" in f.bound_hits]
    assert open_ended and all(math.isnan(f.b_ci[1]) and f.b_ci[0] < f.b for f in open_ended)
    assert all(f.b_ci[1] < 20 for f in fits if f not in open_ended)


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
    table = fit_results(_results_frame(), )
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
    table = fit_results(pd.concat([df, extra]))
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
    table = fit_suite(csv, tmp_path / "scaling.csv")
    assert table.empty
    assert pd.read_csv(tmp_path / "scaling.csv").columns[0] == "dataset"


def test_batched_multistart_fit_is_as_good_as_scipy_least_squares():
    from scipy.optimize import least_squares

    from benchmark.powerlaw import _fit_point

    rng = np.random.default_rng(1)
    x = np.repeat([0.1, 0.3, 1.0, 3.0, 10.0], 2)
    for _ in range(15):
        L = np.log(2 * x**-0.7 + 0.5) + rng.normal(0, 0.05, len(x))
        p, rss = _fit_point(x, L)

        def resid(p, L=L):
            return L - np.log(np.exp(p[0]) * x ** -p[1] + p[2])

        best = min(
            least_squares(resid, [np.log(2), b0, c0], bounds=([-np.inf, 0, 0], [np.inf, 20, np.inf])).cost * 2
            for b0 in (0.3, 0.7, 2.0) for c0 in (0.0, 0.4)
        )
        assert rss <= best + 1e-10 and rss == pytest.approx(float((resid(p) ** 2).sum()))
        assert p[1] >= 0 and p[2] >= 0  # bounds hold


def test_model_size_drops_only_the_budget_tag_of_a_grid_variant():
    assert model_size("mlp.hidden64.images128000") == "mlp.hidden64"
    assert model_size("mlp.hidden64.images1e+06") == "mlp.hidden64"
    assert model_size("mlp.n4") == "mlp.n4"


def test_frontier_is_the_lower_envelope_of_cells_in_compute():
    cells = pd.DataFrame({"C": [1, 2, 2, 4, 8, 16], "q": [5.0, 6.0, 4.0, 4.5, 3.0, 3.0]},
                         index=list("abcdef"))
    assert list(frontier_cells(cells).index) == ["a", "c", "e"]


def _grid_frame(seeds: int = 1, noise: float = 0.02) -> pd.DataFrame:
    """A width x budget grid whose frontier is a known law: a size-limited error
    q = 1 + 40 N^-0.5 + 300 D^-0.5 (Hoffmann et al. 2022 eq. 2 form), C = 6 N D."""
    rng = np.random.default_rng(0)
    rows = []
    for method, scale in (("ect", 1.0), ("imm", 1.5)):
        for n_par in (1e3, 3e3, 9e3):  # 9 distinct compute values (no two cells share N x D)
            for d in (1e4, 4e4, 1.6e5):
                for seed in range(seeds):
                    q = (1 + 40 * n_par**-0.5 + scale * 300 * d**-0.5) * np.exp(rng.normal(0, noise))
                    rows.append(dict(dataset="gmm", method=method, variant=f"mlp.hidden{n_par:g}.images{d:g}",
                                     seed=seed, steps=1, metric="sw2", extractor="", library="exact",
                                     train_flops=6 * n_par * d, total_flops=6 * n_par * d, value=q))
    return pd.DataFrame(rows)


def test_a_size_by_budget_grid_gets_all_cells_frontier_and_per_size_laws():
    table = fit_results(_grid_frame(noise=0.0))
    ect = table[(table["method"] == "ect") & (table["axis"] == "train_flops")].set_index("law")
    assert set(ect.index) == {"all-cells", "frontier", "size:mlp.hidden1000", "size:mlp.hidden3000",
                              "size:mlp.hidden9000"}
    assert ect.loc["all-cells", "n_compute"] == 9 and ect.loc["size:mlp.hidden1000", "n_compute"] == 3
    # three budgets per size: a point estimate and the refusal, never a narrow interval
    assert (ect.filter(like="size:", axis=0)["interval_note"] == NOTE_FEW).all()
    assert ect.filter(like="size:", axis=0)[["b_lo", "b_hi", "ctt_lo", "ctt_hi"]].isna().all().all()
    # noiseless: each size's law is exact, flooring at its size term 1 + 40/sqrt(N) with b = 0.5
    assert ect.loc["size:mlp.hidden9000", "c"] == pytest.approx(1 + 40 * 9e3**-0.5, rel=1e-3)
    assert ect.loc["size:mlp.hidden1000", "b"] == pytest.approx(0.5, rel=1e-3)
    # the frontier: the cheapest cell, then every cell better than all cheaper ones
    assert ect.loc["frontier", "n_points"] == len(frontier_cells(
        _grid_frame(noise=0.0).query("method == 'ect'").rename(columns={"train_flops": "C", "value": "q"})))
    assert ect.loc["all-cells", "interval_note"] == "" and ect.loc["all-cells", "b_lo"] < ect.loc["all-cells", "b"]


def test_exponent_comparison_uses_mover_interval_of_independent_estimates(tmp_path):
    csv = tmp_path / "results.csv"
    _grid_frame(seeds=2).to_csv(csv, index=False)
    table = fit_suite(csv, tmp_path / "scaling.csv")
    comp = pd.read_csv(tmp_path / "scaling_compare.csv")
    row = comp[(comp["law"] == "all-cells") & (comp["axis"] == "train_flops")].iloc[0]
    x = table[(table["law"] == "all-cells") & (table["axis"] == "train_flops")].set_index("method")
    assert (row["method_a"], row["method_b"]) == ("ect", "imm")
    d = x.loc["ect", "b"] - x.loc["imm", "b"]
    assert row["b_diff"] == pytest.approx(d, rel=1e-5)
    lo = d - math.hypot(x.loc["ect", "b"] - x.loc["ect", "b_lo"], x.loc["imm", "b_hi"] - x.loc["imm", "b"])
    hi = d + math.hypot(x.loc["ect", "b_hi"] - x.loc["ect", "b"], x.loc["imm", "b"] - x.loc["imm", "b_lo"])
    assert (row["b_diff_lo"], row["b_diff_hi"]) == pytest.approx((lo, hi), rel=1e-5)
    assert row["verdict"] == ("a steeper" if lo > 0 else "b steeper" if hi < 0 else "undecided")
    # size laws are not compared; a refused side leaves the difference without interval
    assert not comp["law"].str.startswith("size:").any()
    refused = compare_exponents(x.reset_index().assign(b_lo=[np.nan, 0.1]))
    assert refused["b_diff_lo"].isna().all() and refused["note"].iloc[0] == "no interval for ect"


def test_compute_figure_draws_the_frontier_law_where_there_is_one_else_all_cells():
    from benchmark.report.plots import drawn_law

    rows = pd.DataFrame({"law": ["all-cells", "frontier", "size:mlp.hidden32"], "a": [1.0, 2.0, 3.0],
                         "b": [0.5, 0.6, 0.7], "c": [0.1, 0.2, 0.3]})
    assert drawn_law(rows)["b"] == 0.6
    assert drawn_law(rows.iloc[[0, 2]])["law"] == "all-cells"
    # a frontier whose exponent hit its search bound (a, b NaN) cannot be drawn: all cells instead
    assert drawn_law(rows.assign(a=[1.0, np.nan, 3.0], b=[0.5, np.nan, 0.7]))["law"] == "all-cells"
    assert drawn_law(rows.iloc[[2]]) is None and drawn_law(rows.iloc[:0]) is None


def test_compute_to_target_interval_ends_sit_at_the_t_quantile_and_open_up_near_the_floor():
    from scipy import stats

    C, q = _synthetic(seeds=1, noise=0.05)
    fit = fit_power_law(C, q)
    pr, tq = fit.profile, stats.t.ppf(0.975, len(C) - 3)
    lo, hi = ctt_interval(fit, 3.0)
    assert lo < compute_to_target(fit, 3.0) < hi
    for end in (lo, hi):
        tau = math.sqrt((pr.rss_log_ctt(np.array([math.log(end)]), 3.0)[0] - pr.rss0) / pr.s2)
        assert tau == pytest.approx(tq, rel=0.02)
    # a target just above the fitted floor: laws that never reach it fit as well, so no upper end
    lo, hi = ctt_interval(fit, fit.c * 1.01)
    assert lo > 0 and hi == math.inf
