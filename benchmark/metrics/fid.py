"""FID / KID / IS / precision-recall through torch-fidelity, FD cross-checked by clean-fid.

Nothing here re-implements a metric: features come from each library's own extraction path and
the numbers from its own metric functions (torch-fidelity: `fid_statistics_to_metric`,
`kid_features_to_metric`, `isc_features_to_metric`, `prc_features_to_metric`; clean-fid:
`get_files_features`, `frechet_distance`). We only (a) hand them in-memory uint8 images, (b)
make the Inception weights an explicit, verified, offline asset, and (c) let reference
features be computed once (`refstats.py`) instead of per evaluation.

`mode` names how images reach the network. The papers' FIDs (EDM, CM, iCT, ECT, IMM, PD, MCM) use
the TF1 Inception protocol: a bilinear resize to 299 with TF1's pixel mapping inside the network.
torch-fidelity implements it in its Inception ("legacy_tensorflow"), and so does clean-fid's
"legacy_tensorflow" mode (the NVIDIA TorchScript Inception resizing inside), so the two libraries
measure the same protocol and their FDs cross-check each other (`aggregate.crosscheck`). clean-fid's
"clean" mode (PIL bicubic outside the network) is a different protocol, a few per cent away on
upsampled small images, and is not what the papers report. Offline extractors get images at their
native size ("native"). Features are extracted in full fp32 (`exact_fp32`: no TF32 on GPUs).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
from pathlib import Path

import numpy as np
import torch

from benchmark.errors import AssetError
from benchmark.metrics.extractors import as_extractor_input, get_spec, register_with_torch_fidelity

TF_INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"  # torch_fidelity URL_INCEPTION_V3 basename
CLEANFID_INCEPTION_FILE = "inception-2015-12-05.pt"  # cleanfid.downloads_helper.inception_url basename
# clean-fid's file name carries no hash and no reference sha256 is pinned here yet: fill it in
# from a trusted download and the check becomes strict (until then the hash is only recorded).
CLEANFID_INCEPTION_SHA256: str | None = None


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def hub_checkpoints_dir() -> Path:
    """Where torch hub (hence torch-fidelity) keeps weights: $TORCH_HOME/hub/checkpoints,
    read at call time so tests and users can move it with TORCH_HOME."""
    return Path(torch.hub.get_dir()) / "checkpoints"


_SHA_CACHE: dict[tuple[str, int, int], str] = {}


def _sha256(p: Path) -> str:
    from benchmark.provenance import sha256_file

    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(p)
    return _SHA_CACHE[key]


def _file_status(name: str, dirs: list[Path], url: str, sha_prefix: str | None, sha_full: str | None) -> dict:
    found = next((d / name for d in dirs if (d / name).is_file()), None)
    st = {"file": name, "dirs": [str(d) for d in dirs], "url": url, "path": str(found) if found else None,
          "present": found is not None, "sha256": None, "expected_sha256": sha_full,
          "expected_sha256_prefix": sha_prefix, "sha256_ok": False}
    if found is not None:
        h = _sha256(found)
        ok = (sha_prefix is None or h.startswith(sha_prefix)) and (sha_full is None or h == sha_full)
        st.update(sha256=h, sha256_ok=ok)
    return st


def inception_weights_status() -> dict[str, dict]:
    """Per library: the Inception-v3 (2015-12-05) file it loads, the directories searched
    (the torch hub cache first), whether it is there, and whether its sha256 checks out.

    torch-fidelity's file name ends in the first 8 hex digits of its sha256 (the torch hub
    convention, `torch.hub.HASH_REGEX`), which is what is checked. clean-fid normally looks in
    /tmp; the hub cache is searched first so one directory can hold both files."""
    hub = hub_checkpoints_dir()
    m = re.search(torch.hub.HASH_REGEX, TF_INCEPTION_FILE)
    tf_url = ("https://github.com/toshas/torch-fidelity/releases/download/v0.2.0/" + TF_INCEPTION_FILE)
    cf_url = ("https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/metrics/"
              + CLEANFID_INCEPTION_FILE)
    return {
        "torch-fidelity": _file_status(TF_INCEPTION_FILE, [hub], tf_url, m.group(1) if m else None, None),
        "clean-fid": _file_status(CLEANFID_INCEPTION_FILE, [hub, Path("/tmp")], cf_url, None,
                                  CLEANFID_INCEPTION_SHA256),
    }


def require_inception(libraries: tuple[str, ...] = ("torch-fidelity", "clean-fid"),
                      verify: bool = True) -> dict[str, Path]:
    """Paths of the verified Inception weights, or one AssetError naming every missing or
    corrupt file and the directory to put it in. Call it before any work (DESIGN §5).
    `verify=False` (the `inception_randominit` extractor) accepts any file under the standard name."""
    status = inception_weights_status()
    problems, fixes = [], []
    for lib in libraries:
        s = status[lib]
        if not s["present"]:
            problems.append(f"{s['file']} (for {lib}) not in {s['dirs'][0]}")
            fixes.append(f"download {s['url']} into {s['dirs'][0]}/")
        elif verify and not s["sha256_ok"]:
            problems.append(f"{s['path']} (for {lib}) has sha256 {s['sha256'][:12]}…, expected "
                            f"{s['expected_sha256'] or s['expected_sha256_prefix']}…")
            fixes.append(f"re-download {s['url']} into {s['dirs'][0]}/")
    if problems:
        raise AssetError("Inception-v3 weights missing or corrupt: " + "; ".join(problems),
                         "; ".join(fixes) + " (set TORCH_HOME to use another cache directory)")
    return {lib: Path(status[lib]["path"]) for lib in libraries}


class U8Dataset(torch.utils.data.Dataset):
    """uint8 NHWC array -> uint8 CHW tensors: the input type torch-fidelity's extractors take."""

    def __init__(self, images_u8_nhwc: np.ndarray):
        self.x = torch.from_numpy(np.ascontiguousarray(images_u8_nhwc)).permute(0, 3, 1, 2)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i].contiguous()


def weights_for(extractor: str, weights_path: str | Path | None, library: str) -> str | None:
    """The weights file `library` must load for `extractor` (verified Inception, the Inception
    file unverified for `inception_randominit`, or the offline extractor's own checkpoint)."""
    spec = get_spec(extractor)
    if spec.inception_arch:
        return str(require_inception((library,), verify=spec.standard_inception)[library])
    return None if weights_path is None else str(weights_path)


def require_extractor(extractor: str, weights_path: str | Path | None) -> None:
    """Every asset `extractor` needs, checked before any work: one line naming what is missing."""
    from benchmark.metrics.extractors import load_offline_net

    spec = get_spec(extractor)
    if spec.inception_arch:
        require_inception(verify=spec.standard_inception)
    else:
        load_offline_net(extractor, weights_path)


def _tf_kwargs(extractor: str, weights_path, **extra) -> dict:
    return {"cuda": torch.cuda.is_available(), "verbose": False, "save_cpu_ram": True, "cache": False,
            "feature_extractor_weights_path": weights_for(extractor, weights_path, "torch-fidelity"), **extra}


def tf_features(images_u8_nhwc: np.ndarray, extractor: str, weights_path=None,
                batch_size: int = 64, layers: list[str] | None = None) -> dict[str, torch.Tensor]:
    """torch-fidelity features {layer: [N, F] float32} of uint8 images, by its own code path."""
    from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

    exact_fp32()
    register_with_torch_fidelity()
    spec = get_spec(extractor)
    layers = layers or [spec.layer_fd] + ([spec.layer_is] if spec.layer_is else [])
    kw = _tf_kwargs(extractor, weights_path)
    with contextlib.redirect_stdout(io.StringIO()):
        fe = create_feature_extractor(spec.tf_name, list(layers), **kw)
        return get_featuresdict_from_dataset(U8Dataset(as_extractor_input(images_u8_nhwc, extractor)), fe,
                                             batch_size, kw["cuda"], True, False)


def split_features(fn, images: np.ndarray, batch_size: int, dist=None):
    """`fn(images)` (features: an array or a {layer: tensor} dict), with each torchrun rank
    extracting a contiguous block of whole `batch_size` batches, so every batch is one the
    unsplit call makes and the merge (rank order, on every rank) equals it. One process: fn(images)."""
    if dist is None or not dist.active:
        return fn(images)
    from benchmark.distributed import gather_in_order, my_batches

    starts = my_batches(len(images), batch_size, dist)
    block = images[starts[0]:starts[-1] + batch_size] if len(starts) else images[:0]
    mine = fn(block) if len(block) else None
    if isinstance(mine, dict):
        mine = {k: v.cpu() for k, v in mine.items()}
    parts, _ = gather_in_order(dist, [] if mine is None else [mine], [])
    if isinstance(parts[0], dict):
        return {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    return np.concatenate(parts)


def fd_stats(features: torch.Tensor) -> dict[str, np.ndarray]:
    """torch-fidelity's own mu/sigma of a feature set (mu keeps the feature dtype, sigma float64)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    return fid_features_to_statistics(features.cpu())


def kid(*, real: torch.Tensor, fake: torch.Tensor, seed: int, subsets: int = 100,
        subset_size: int = 1000) -> dict[str, float]:
    """torch-fidelity KID (unbiased MMD^2, cubic polynomial kernel) over random subsets;
    the subset size shrinks to the smaller set when there are fewer than `subset_size` samples."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric

    size = min(subset_size, len(real), len(fake))
    m = kid_features_to_metric(torch.as_tensor(fake), torch.as_tensor(real), kid_subsets=subsets,
                               kid_subset_size=size, rng_seed=seed, verbose=False)
    return {"kid": m[KEY_METRIC_KID_MEAN], "kid_std": m[KEY_METRIC_KID_STD], "kid_subset_size": size}


def precision_recall(*, real: torch.Tensor, fake: torch.Tensor, k: int = 3) -> dict[str, float]:
    """Improved precision/recall (Kynkäänniemi et al. 2019) by torch-fidelity. Named inputs,
    because swapping them swaps the meaning: precision = share of `fake` inside the real
    manifold, recall = share of `real` inside the fake manifold (a collapsed generator has
    recall ≈ 0). torch-fidelity's convention is input1 = generated, input2 = real."""
    from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

    m = prc_features_to_metric(torch.as_tensor(fake).float(), torch.as_tensor(real).float(),
                               prc_neighborhood=k, prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    return {"precision": m[KEY_METRIC_PRECISION], "recall": m[KEY_METRIC_RECALL]}


def compute_fidelity(samples_u8_nhwc: np.ndarray, ref: dict, extractor: str, *, weights_path=None,
                     seed: int = 0, kid_on: bool = True, isc: bool | None = None, prc: bool = True,
                     kid_subsets: int | None = None, kid_subset_size: int = 1000, prc_k: int = 3,
                     batch_size: int = 64, dist=None) -> dict[str, float]:
    """torch-fidelity metrics of uint8 NHWC samples against cached reference statistics `ref`
    (from `refstats.load_ref_stats`: mu, sigma and, for KID/PR, features, all by torch-fidelity).

    Returns {"fd", "kid", "kid_std", "is", "is_std", "precision", "recall"} (those requested).
    `isc` defaults to on for the standard Inception only (IS needs ImageNet logits). `kid_subsets`
    defaults to torch-fidelity's 100 for the standard Inception (the published protocol) and to 20 for
    offline extractors: on one CPU thread each subset costs ~50 ms, and 20 subsets already pin the mean
    well below its subset-to-subset std, which is reported beside it. Under torchrun (`dist`) the
    ranks split the feature extraction (`split_features`); rank 0 computes the metrics, others get {}."""
    from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_statistics_to_metric
    from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric

    spec = get_spec(extractor)
    isc = spec.standard_inception if isc is None else isc
    kid_subsets = (100 if spec.standard_inception else 20) if kid_subsets is None else kid_subsets
    feats = split_features(lambda x: tf_features(x, extractor, weights_path, batch_size), samples_u8_nhwc,
                           batch_size, dist)
    if dist is not None and not dist.is_main:
        return {}
    fake = feats[spec.layer_fd]
    st = fd_stats(fake)  # torch-fidelity asserts equal dtypes: a published mu may be float64
    ref_st = {k: np.asarray(ref[k]).astype(st[k].dtype) for k in ("mu", "sigma")}
    out = {"fd": fid_statistics_to_metric(st, ref_st, False)[KEY_METRIC_FID]}
    if "imported" in ref.get("provenance", {}):  # published mu/sigma only: FD, no KID/PR
        kid_on = prc = False
    if (kid_on or prc) and "features" not in ref:
        raise AssetError(f"reference stats for '{extractor}' hold no features (needed for KID/PR)",
                         "recompute them with keep_features > 0")
    real = torch.as_tensor(ref["features"]) if "features" in ref else None
    if kid_on:
        out.update({k: v for k, v in kid(real=real, fake=fake, seed=seed, subsets=kid_subsets,
                                         subset_size=kid_subset_size).items() if k != "kid_subset_size"})
    if isc and spec.layer_is:
        m = isc_features_to_metric(feats[spec.layer_is], splits=10, shuffle=True, rng_seed=seed)
        out.update({"is": m[KEY_METRIC_ISC_MEAN], "is_std": m[KEY_METRIC_ISC_STD]})
    if prc:
        out.update(precision_recall(real=real, fake=fake, k=prc_k))
    return out


# ---------------------------------------------------------------- clean-fid

def cleanfid_mode(extractor: str) -> str:
    return "legacy_tensorflow" if get_spec(extractor).inception_arch else "native"


def exact_fp32() -> None:
    """Feature extraction in full fp32: TF32 convolutions/matmuls (PyTorch's cuDNN default on
    Ampere and later) would move Inception features by ~1e-3, as much as the cross-check allows."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def tf_mode(extractor: str) -> str:
    return "legacy_tensorflow" if get_spec(extractor).inception_arch else "native"


def _cleanfid_model(extractor: str, weights_path, dev: torch.device):
    spec = get_spec(extractor)
    if spec.inception_arch:
        from cleanfid.inception_torchscript import InceptionV3W

        path = Path(weights_for(extractor, None, "clean-fid"))
        net = InceptionV3W(str(path.parent), download=False, resize_inside=True).to(dev).eval()
        # = cleanfid.features.build_feature_extractor("legacy_tensorflow") without DataParallel
        return lambda x: net(x.to(dev))
    from benchmark.metrics.extractors import cleanfid_feature_fn

    return cleanfid_feature_fn(extractor, weights_path, dev)


def cleanfid_features(images_u8_nhwc: np.ndarray, extractor: str, weights_path=None,
                      batch_size: int = 64) -> np.ndarray:
    """clean-fid features [N, F] through `cleanfid.fid.get_files_features` (its dataset, resize
    and batching code), fed one .npy file per image, which clean-fid reads natively."""
    from cleanfid.fid import get_files_features

    exact_fp32()
    imgs = as_extractor_input(images_u8_nhwc, extractor)
    dev = device()
    model = _cleanfid_model(extractor, weights_path, dev)
    native = not get_spec(extractor).inception_arch
    shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None  # RAM: 5x faster for thousands of tiny files
    with tempfile.TemporaryDirectory(prefix="cleanfid-", dir=shm) as d:
        files = []
        for i, img in enumerate(imgs):
            files.append(os.path.join(d, f"{i:07d}.npy"))
            np.save(files[-1], img)
        with contextlib.redirect_stdout(io.StringIO()):
            return get_files_features(files, model, num_workers=0, batch_size=batch_size, device=dev,
                                      mode="clean" if native else cleanfid_mode(extractor),
                                      custom_fn_resize=(lambda x: x) if native else None,
                                      verbose=False)


def cleanfid_stats(features: np.ndarray) -> dict[str, np.ndarray]:
    """mu/sigma exactly as clean-fid's compute_fid forms them."""
    return {"mu": np.mean(features, axis=0), "sigma": np.cov(features, rowvar=False)}


def compute_cleanfid(samples_u8_nhwc: np.ndarray, ref: dict, extractor: str, *, weights_path=None,
                     batch_size: int = 64, dist=None) -> dict:
    """clean-fid's Fréchet distance of the samples to the reference's clean-fid statistics
    (`cleanfid_mu`, `cleanfid_sigma`, computed by the same clean-fid path). Returns {fd, mode}."""
    from cleanfid.fid import frechet_distance

    feats = split_features(lambda x: cleanfid_features(x, extractor, weights_path, batch_size), samples_u8_nhwc,
                           batch_size, dist)
    if dist is not None and not dist.is_main:
        return {}
    st = cleanfid_stats(feats)
    with contextlib.redirect_stdout(io.StringIO()):
        fd = frechet_distance(st["mu"], st["sigma"], ref["cleanfid_mu"], ref["cleanfid_sigma"])
    return {"fd": float(fd), "mode": cleanfid_mode(extractor)}
