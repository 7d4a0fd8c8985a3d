"""Zero-shot editing (CM Algorithm 4) with the exact consistency function of a point-mass data law:
the known quantity (pixels, patch means, luminance) is reproduced exactly and the rest comes from f."""

from __future__ import annotations

import pytest
import torch

from benchmark.editing import colorize, editing_sigmas, inpaint, luminance, super_resolve
from methods.consistency import ConsistencyTraining

EPS = 0.002


def point_mass_f(y_star):
    """Data = delta at y*: the PF-ODE is x_t = y* + (t/T)(x_T - y*), so f*(x, t) = y* + (eps/t)(x - y*)."""
    def f(x, t):
        return y_star + (EPS / t.view(-1, *([1] * (x.ndim - 1)))) * (x - y_star)
    return f


def image(seed=0, shape=(2, 3, 8, 8)):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * 1.6 - 0.8


SIGMAS = [80.0, 10.0, 1.0]


def test_inpainting_keeps_known_pixels_exactly_and_fills_the_rest_from_the_model():
    y_star = image(0)
    y = image(1)  # a different reference: the known pixels must come from y, the rest from f
    mask = (torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(2)) > 0.5).double()
    out = inpaint(point_mass_f(y_star), y, mask, SIGMAS, torch.Generator().manual_seed(3))
    keep = mask.expand_as(y).bool()
    assert torch.equal(out[keep], y[keep])
    assert (out[~keep] - y_star[~keep]).abs().max() < 0.02  # eps/t_N * |noise| ~ 0.002 * 4
    assert out.abs().max() <= 1.0


def test_super_resolution_output_average_pools_to_the_low_resolution_input():
    y_star = image(0)
    y_low = torch.nn.functional.avg_pool2d(image(1), 2)
    out = super_resolve(point_mass_f(y_star), y_low, 2, SIGMAS, torch.Generator().manual_seed(3))
    assert out.shape == (2, 3, 8, 8)
    torch.testing.assert_close(torch.nn.functional.avg_pool2d(out, 2), y_low, rtol=0, atol=1e-12)
    # within-patch detail is the model's: out = y* - up(pool(y*)) + up(y_low) up to eps/t
    up = lambda v: v.repeat_interleave(2, -1).repeat_interleave(2, -2)  # noqa: E731
    detail = y_star - up(torch.nn.functional.avg_pool2d(y_star, 2))
    assert (out - up(y_low) - detail).abs().max() < 0.02


def test_super_resolution_of_consistent_input_recovers_the_image():
    y_star = image(0)
    out = super_resolve(point_mass_f(y_star), torch.nn.functional.avg_pool2d(y_star, 2), 2, SIGMAS,
                        torch.Generator().manual_seed(4))
    assert (out - y_star).abs().max() < 0.02


def test_colorization_keeps_luminance_exactly():
    y_star = image(0)
    y_gray = luminance(image(1))
    out = colorize(point_mass_f(y_star), y_gray, SIGMAS, torch.Generator().manual_seed(3))
    torch.testing.assert_close(luminance(out), y_gray, rtol=0, atol=1e-12)
    out2 = colorize(point_mass_f(y_star), luminance(y_star), SIGMAS, torch.Generator().manual_seed(3))
    assert (out2 - y_star).abs().max() < 0.02  # consistent luminance: the colours of y* come back


def test_editing_works_with_a_method_consistency_fn_and_rejects_bad_sigmas():
    from benchmark.nets.mlp import MLP

    m = ConsistencyTraining(total_steps=10, data_shape=(16,))
    f = m.consistency_fn(MLP(16, hidden=8, depth=1))
    y = torch.rand(4, 16) * 2 - 1
    mask = torch.zeros(4, 16)
    mask[:, :8] = 1
    out = inpaint(f, y, mask, editing_sigmas(3), torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :8], y[:, :8]) and out.abs().max() <= 1
    out = super_resolve(f, torch.nn.functional.avg_pool1d(y[:, None], 2)[:, 0], 2, editing_sigmas(2))
    torch.testing.assert_close(torch.nn.functional.avg_pool1d(out[:, None], 2)[:, 0],
                               torch.nn.functional.avg_pool1d(y[:, None], 2)[:, 0])
    assert editing_sigmas(3)[0] == 80.0 and len(editing_sigmas(3)) == 3
    with pytest.raises(ValueError):
        inpaint(f, y, mask, [1.0, 10.0])
