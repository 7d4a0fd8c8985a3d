"""Zero-shot image editing with a consistency model (Song et al. 2023, Algorithm 4; openai/consistency_models
cm/karras_diffusion.py iterative_inpainting / iterative_superres / iterative_colorization).

Given a consistency function f(x, sigma), a reference y and a decreasing sequence t_1 > ... > t_N > eps:

    x ~ N(y_known, t_1^2 I);  x <- f(x, t_1);  x <- R(x)
    for n = 2..N:  x <- x + sqrt(t_n^2 - eps^2) z;  x <- f(x, t_n);  x <- R(x)

R(x) = A^{-1}[(A y) ⊙ K + (A x) ⊙ (1 - K)] puts the known part of A y back, with K = 1 on known coordinates
(the paper's Omega marks the *unknown* ones: K = 1 - Omega). With an orthogonal A the replacement is the
projection onto "agrees with y on the known quantity", which we write directly:
  - inpainting: A = I, K = mask (1 = keep)                          -> x <- mask y + (1 - mask) x
  - super-resolution: A = per-patch orthogonal basis whose first vector is the patch mean
                                                                     -> x <- x - up(pool(x)) + up(y_low)
  - colorization: A = per-pixel orthogonal basis of RGB whose first vector is the luminance weights w
                                                                     -> x <- x + w (L - w.x) / |w|^2
These closed forms equal the code's QR-built matrices (the other basis vectors span the complement), and
make the known quantity hold exactly: inpainted pixels equal y, the output average-pools to y_low, its
luminance equals the given L.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from benchmark.diffusion import as_batch, karras_sigmas

ConsistencyFn = Callable[[Tensor, Tensor], Tensor]
LUMA = (0.2989, 0.5870, 0.1140)  # ITU-R 601 luminance weights, as in the CM code's colorization


def editing_sigmas(n: int, sigma_min: float = 0.002, sigma_max: float = 80.0,
                   rho: float = 7.0) -> list[float]:
    """A default t_1 > ... > t_n: the first n levels of an (n+1)-level Karras grid
    (EDM Eq. 5), eps excluded."""
    return karras_sigmas(n + 1, sigma_min, sigma_max, rho, append_zero=False)[:-1].tolist()


@torch.no_grad()
def replace_iterate(f: ConsistencyFn, y_known: Tensor, replace: Callable[[Tensor], Tensor],
                    sigmas: Sequence[float], generator: torch.Generator | None = None,
                    sigma_min: float = 0.002) -> Tensor:
    """CM Algorithm 4 for any replacement R (x -> x with the known part of y put back)."""
    sigmas = [float(s) for s in sigmas]
    if not sigmas or any(a <= b for a, b in zip(sigmas, sigmas[1:])) or sigmas[-1] <= sigma_min:
        raise ValueError("sigmas must be strictly decreasing and above sigma_min")
    noise = lambda: torch.randn(y_known.shape, generator=generator, device=y_known.device,  # noqa: E731
                                dtype=y_known.dtype)
    x = y_known + sigmas[0] * noise()  # x ~ N(y, t_1^2 I)  (Alg. 4 line 3)
    for n, t in enumerate(sigmas):
        if n > 0:
            x = x + math.sqrt(t**2 - sigma_min**2) * noise()  # Alg. 4 line 7
        x = replace(f(x, as_batch(t, x)))  # lines 8-9
    return x


def inpaint(f: ConsistencyFn, y: Tensor, mask: Tensor, sigmas: Sequence[float],
            generator: torch.Generator | None = None, sigma_min: float = 0.002) -> Tensor:
    """Fill the pixels where mask == 0; pixels where mask == 1 are kept equal to y exactly."""
    mask = mask.to(y.dtype).expand_as(y)
    y_known = mask * y  # Alg. 4 line 2 (unknown pixels set to 0)
    return replace_iterate(f, y_known, lambda x: mask * y + (1 - mask) * x, sigmas, generator, sigma_min)


def _pool(x: Tensor, factor: int) -> Tensor:
    return F.avg_pool2d(x, factor) if x.ndim == 4 else F.avg_pool1d(x[:, None], factor)[:, 0]


def _up(x: Tensor, factor: int) -> Tensor:
    return x.repeat_interleave(factor, -1).repeat_interleave(factor, -2) if x.ndim == 4 \
        else x.repeat_interleave(factor, -1)


def super_resolve(f: ConsistencyFn, y_low: Tensor, factor: int, sigmas: Sequence[float],
                  generator: torch.Generator | None = None, sigma_min: float = 0.002) -> Tensor:
    """Upsample y_low [B, C, h, w] (or [B, d] vectors) by `factor`: the output's factor x factor patch means
    equal y_low exactly; the within-patch detail comes from the model."""
    y_up = _up(y_low, factor)
    return replace_iterate(f, y_up, lambda x: x - _up(_pool(x, factor), factor) + y_up, sigmas, generator,
                           sigma_min)


def luminance(x: Tensor) -> Tensor:
    """L = w . rgb per pixel, [B, 1, H, W]."""
    w = x.new_tensor(LUMA).view(1, 3, 1, 1)
    return (w * x).sum(1, keepdim=True)


def colorize(f: ConsistencyFn, y_gray: Tensor, sigmas: Sequence[float],
             generator: torch.Generator | None = None, sigma_min: float = 0.002) -> Tensor:
    """Colour a luminance image y_gray [B, 1, H, W] (in the data's [-1, 1] units): the RGB output has
    luminance(x) == y_gray exactly; chrominance comes from the model."""
    w = y_gray.new_tensor(LUMA).view(1, 3, 1, 1)
    y_known = w * y_gray / (w**2).sum()  # the minimum-norm RGB with luminance y_gray (A^-1 of [L, 0, 0])
    return replace_iterate(f, y_known, lambda x: x + w * (y_gray - luminance(x)) / (w**2).sum(), sigmas,
                           generator, sigma_min)


def edit_panel(run, ckpt_path, data_dir, out, *, seed: int = 0, n_images: int = 8, n_levels: int = 4) -> dict:
    """The report's editing panel for a trained consistency model on image data: held-out images,
    their masked / 2x-downsampled versions and the model's inpainting / super-resolution, as one PNG.

    Rows: original, masked input (right half unknown), inpainted, low-res input (2x), super-resolved.
    Also writes `{out}.json` with the mean squared error of each edit against the original."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from benchmark.data import load_split, to_model_space
    from benchmark.errors import ConfigError
    from benchmark.provenance import atomic_path, write_json
    from benchmark.runs import load_trained_for

    man, method, net = load_trained_for(run, ckpt_path, data_dir, task="editing", data="image",
                                        need="consistency_fn", why="editing needs cd/ct/ict/ect")
    f = method.consistency_fn(net)
    test = load_split(data_dir, "test")
    n_images = min(n_images, len(test))  # a real dataset's held-out split may be smaller than the panel
    if n_images < 1:
        raise ConfigError(f"dataset '{man['name']}' has no test images to edit", "prepare it with a test split")
    y = to_model_space(test[:n_images])
    mask = torch.ones_like(y)
    mask[..., y.shape[-1] // 2:] = 0  # right half unknown
    g = torch.Generator().manual_seed(seed)
    sig = editing_sigmas(n_levels)
    with torch.no_grad():
        filled = inpaint(f, y, mask, sig, g)
        y_low = _pool(y, 2)
        sr = super_resolve(f, y_low, 2, sig, g)
    rows = [("original", y), ("masked", y * mask - (1 - mask)), ("inpainted", filled),
            ("low-res 2x", _up(y_low, 2)), ("super-resolved", sr)]
    fig, axes = plt.subplots(len(rows), n_images, figsize=(n_images * 0.9, len(rows) * 0.95), squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(n_images):
            ax = axes[r, c]
            im = imgs[c].clamp(-1, 1).permute(1, 2, 0).numpy() * 0.5 + 0.5
            ax.imshow(im.squeeze(-1) if im.shape[-1] == 1 else im, cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    fig.suptitle(f"zero-shot editing: {run.name}", fontsize=8)
    out = Path(out)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    err = {"inpaint_mse": float(((filled - y) ** 2).mean()), "superres_mse": float(((sr - y) ** 2).mean()),
           "inpaint_known_max_abs_err": float(((filled - y).abs() * mask).max())}
    write_json(out.with_suffix(".json"), {"run": run.name, **err})
    return err
