"""Import released networks into our checkpoint format (`python -m benchmark import-checkpoint`),
and check such a file where a suite names it as a run's teacher (`teacher_ckpt:`, `imported_teacher`).

Sources:
  edm  a network pickle of the EDM/ECT releases (a dict whose 'ema' is the preconditioned
       network) or a state dict exported from one (keys `model.enc.32x32_conv.weight`, ...).
       Our SongUNet/DhariwalUNet use the released attribute names, so the mapping is the rule
       `model.<name>` -> `<name>`; the architecture comes from the pickle's recorded
       constructor arguments, or is inferred from the state dict's keys and shapes.
  cm   an openai consistency-models `.pt` state dict (`input_blocks.0.0.weight`,
       `time_embed.0.weight`, `label_emb.weight`, ...): an ADM mapped block by block onto our
       DhariwalUNet (benchmark/nets/cm_keys.py).

The pickle is read by a restricted unpickler that rebuilds tensors, ordered dicts and plain
containers only. Every other class the pickle names (the released code's modules, the source
code pickled inside it) becomes an inert record of its name and state: nothing is imported
or executed. Every source tensor must land on a parameter/buffer of the same shape, and every
parameter must be filled; otherwise CheckpointError names the first offending key.
"""

from __future__ import annotations

import io
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from benchmark.errors import CheckpointError, ConfigError

SUPPORTED_PRECOND = ("EDMPrecond", "ECMPrecond")  # c_noise = ln(sigma)/4, c_skip/c_out of EDM
SONG_KEYS = ("model_channels", "channel_mult", "channel_mult_emb", "num_blocks", "attn_resolutions", "dropout",
             "embedding_type", "channel_mult_noise", "encoder_type", "decoder_type", "resample_filter",
             "augment_dim")
ADM_KEYS = ("model_channels", "channel_mult", "channel_mult_emb", "num_blocks", "attn_resolutions", "dropout",
            "augment_dim")


class Record:
    """An inert stand-in for any class a pickle names: keeps the name, arguments and state."""

    qualname = "?"

    def __new__(cls, *args: Any, **kwargs: Any):
        return object.__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs, self.state = args, kwargs, {}

    def __setstate__(self, state: Any) -> None:
        self.state = state if isinstance(state, dict) else {"_state": state}


def _record_class(qualname: str) -> type:
    return type(qualname.rsplit(".", 1)[-1], (Record,), {"qualname": qualname})


def _persistent_obj(meta: dict) -> Record:
    """EDM's `persistence._reconstruct_persistent_obj`, minus the exec of meta['module_src']."""
    obj = _record_class(str(meta.get("class_name", "?")))()
    obj.__setstate__(dict(meta.get("state") or {}))
    return obj


def _storage_from_bytes(data: bytes):
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)  # releases hold CUDA storages


try:  # numpy >= 2
    from numpy._core.multiarray import scalar as _np_scalar
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import scalar as _np_scalar


def _reconstructor(cls: type, base: type, state: Any) -> Any:
    return cls.__new__(cls)


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch.storage", "_load_from_bytes"): _storage_from_bytes,
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _persistent_obj,
    ("collections", "OrderedDict"): OrderedDict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("copyreg", "_reconstructor"): _reconstructor,
    ("numpy", "dtype"): np.dtype,  # numpy scalars in recorded kwargs (np.float64 dropout, ...)
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}


def plain(obj: Any) -> Any:
    """Recorded values as plain Python (numbers, strings, lists, dicts) so the checkpoint stays
    loadable with weights_only=True; anything else becomes its repr."""
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj) if not isinstance(obj, Record) else f"<{obj.qualname}>"


class RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds tensors and containers; any other global becomes a `Record` subclass."""

    def __init__(self, f: Any):
        super().__init__(f)
        self.recorded: set[str] = set()

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "dnnlib.util" and name == "EasyDict":
            return dict
        self.recorded.add(f"{module}.{name}")
        return _record_class(f"{module}.{name}")


def flatten_module(obj: Any, prefix: str = "") -> dict[str, Tensor]:
    """A recorded nn.Module's persistent parameters and buffers, named like its state_dict."""
    if not isinstance(obj, Record):
        raise CheckpointError(f"'{prefix or 'ema'}' in the pickle is a {type(obj).__name__}, not a network",
                              "pass the network pickle of an EDM/ECT release (its 'ema' entry is the network)")
    st, out = obj.state, {}
    skip = set(st.get("_non_persistent_buffers_set") or ())
    for name, t in list((st.get("_parameters") or {}).items()) + list((st.get("_buffers") or {}).items()):
        if t is not None and name not in skip:
            out[prefix + name] = t.detach() if isinstance(t, Tensor) else t
    for name, sub in (st.get("_modules") or {}).items():
        if sub is not None:
            out.update(flatten_module(sub, f"{prefix}{name}."))
    return out


def read_edm_pickle(path: Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """(state dict of the 'ema' network, {'class', 'init_kwargs', 'recorded'}) of a release pickle."""
    with open(path, "rb") as f:
        up = RestrictedUnpickler(f)
        try:
            data = up.load()
        except Exception as e:  # noqa: BLE001 - any failure means the file is not a readable pickle
            raise CheckpointError(f"{path} is not a readable network pickle ({type(e).__name__}: {e})",
                                  "pass an EDM/ECT release .pkl, or a state dict saved with torch.save") from None
    ema = data.get("ema") if isinstance(data, dict) else None
    if ema is None:
        raise CheckpointError(f"{path} has no 'ema' network", "pass the network-snapshot-*.pkl of an EDM/ECT release")
    state = flatten_module(ema)
    kwargs = plain(dict(ema.state.get("_init_kwargs") or {}))
    return state, {"class": ema.qualname, "init_kwargs": kwargs, "recorded": sorted(up.recorded)}


def _strip(sd: dict[str, Tensor]) -> dict[str, Tensor]:
    return {k[len("model."):] if k.startswith("model.") else k: v for k, v in sd.items()}


def edm_cfg_from_kwargs(kw: dict[str, Any]) -> tuple[dict[str, Any], tuple[int, int, int]]:
    """Our net config and data shape from an EDM precond's recorded constructor arguments."""
    model = kw.get("model_type", "SongUNet")
    if model not in ("SongUNet", "DhariwalUNet"):
        raise CheckpointError(f"network type '{model}' is not supported", "import SongUNet or DhariwalUNet networks")
    keys = SONG_KEYS if model == "SongUNet" else ADM_KEYS
    cfg = {"type": "songunet" if model == "SongUNet" else "adm"}
    cfg.update({k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in kw.items() if k in keys})
    if kw.get("label_dim"):
        cfg["label_dim"] = int(kw["label_dim"])
    res, ch = int(kw["img_resolution"]), int(kw["img_channels"])
    return cfg, (ch, res, res)


def _levels(sd: dict[str, Tensor]) -> list[int]:
    """Resolutions of the encoder's levels, highest first, from `enc.{r}x{r}_...` keys."""
    return sorted({int(k.split(".")[1].split("x")[0]) for k in sd if k.startswith("enc.")}, reverse=True)


def _filter_1d(f2d: Tensor) -> list[int]:
    """Recover the 1-D resampling filter f from its normalised outer product f f^T / sum(f)^2."""
    row = f2d.reshape(f2d.shape[-2], f2d.shape[-1])[0].float()
    return [int(round(v)) for v in (row / row[0]).tolist()]


def edm_cfg_from_state(sd: dict[str, Tensor]) -> tuple[dict[str, Any], tuple[int, int, int]]:
    """Infer the architecture of an EDM-family state dict (no recorded kwargs) from its keys and shapes."""
    levels = _levels(sd)
    top = levels[0] if levels else None
    if top is None or f"enc.{top}x{top}_conv.weight" not in sd or "map_layer0.weight" not in sd:
        raise CheckpointError("the state dict has no `model.enc.<R>x<R>_conv.weight` / `model.map_layer0.weight`",
                              "pass an EDM-family network (SongUNet/DhariwalUNet) or use --kind cm")
    adm = "out_conv.weight" in sd
    conv = sd[f"enc.{top}x{top}_conv.weight"]
    noise_ch, emb_ch = sd["map_layer0.weight"].shape[1], sd["map_layer0.weight"].shape[0]
    mc = noise_ch if adm else conv.shape[0]
    blocks = sorted({k.split(".")[1] for k in sd if k.startswith(f"enc.{top}x{top}_block")})
    cfg: dict[str, Any] = {
        "type": "adm" if adm else "songunet", "model_channels": mc, "channel_mult_emb": emb_ch // mc,
        "channel_mult": [sd[f"enc.{r}x{r}_block0.conv0.weight"].shape[0] // mc for r in levels],
        "num_blocks": len(blocks),
        "attn_resolutions": [r for r in levels if f"enc.{r}x{r}_block0.qkv.weight" in sd]}
    if "map_label.weight" in sd:
        cfg["label_dim"] = sd["map_label.weight"].shape[1]
    if "map_augment.weight" in sd:
        cfg["augment_dim"] = sd["map_augment.weight"].shape[1]
    if not adm:
        names = {k.split(".")[1] for k in sd if k.startswith(("enc.", "dec."))}
        filt = next((v for k, v in sd.items() if k.endswith("resample_filter")), None)
        cfg.update(embedding_type="fourier" if "map_noise.freqs" in sd else "positional",
                   channel_mult_noise=noise_ch // mc,
                   encoder_type=("residual" if any("aux_residual" in n for n in names)
                                 else "skip" if any("aux_skip" in n for n in names) else "standard"),
                   decoder_type="skip" if any("aux_up" in n for n in names) else "standard",
                   resample_filter=_filter_1d(filt) if filt is not None else [1, 1])
    return cfg, (conv.shape[1], top, top)


def load_exact(net: torch.nn.Module, mapped: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Our state dict filled from `mapped` (our names): every key must exist with the same shape and
    every parameter and buffer must be filled, except the resampling filters (constants of the
    architecture, which openai's ADM does not store)."""
    ours = net.state_dict()
    for k, v in mapped.items():
        if k not in ours:
            raise CheckpointError(f"{source}: key '{k}' has no counterpart in our network",
                                  "the checkpoint's architecture differs from the inferred one; check --kind")
        if tuple(v.shape) != tuple(ours[k].shape):
            raise CheckpointError(f"{source}: key '{k}' has shape {tuple(v.shape)}, ours {tuple(ours[k].shape)}",
                                  "the checkpoint's architecture differs from the inferred/recorded one")
    missing = [k for k in ours if not k.endswith("resample_filter") and k not in mapped]
    if missing:
        raise CheckpointError(f"{source}: our tensor '{missing[0]}' is not in the checkpoint "
                              f"({len(missing)} missing)", "the checkpoint is incomplete or of another architecture")
    out = {k: mapped.get(k, v).to(v.dtype).clone() for k, v in ours.items()}
    net.load_state_dict(out)
    return out


def _read_state_dict(path: Path) -> dict[str, Tensor]:
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a torch.save file (or one holding code)
        raise CheckpointError(f"{path} is not a tensor-only torch file ({type(e).__name__})",
                              "pass a state dict saved with torch.save, or an EDM/ECT .pkl") from None
    for key in ("ema", "model", "state_dict"):  # wrappers some exports use
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors", "export net.state_dict()")
    return dict(sd)


def convert(src: Path, kind: str, resolution: int | None = None,
            attention: str = "flash") -> tuple[dict[str, Any], tuple[int, int, int], dict[str, Tensor], dict]:
    """(net config, data shape, our state dict, source info) of a released network."""
    from benchmark.nets import build_net

    src = Path(src)
    if not src.exists():
        raise CheckpointError(f"{src} does not exist", "give the path of the downloaded checkpoint")
    info: dict[str, Any] = {"kind": kind}
    if kind == "edm":
        if src.suffix == ".pkl":
            raw, meta = read_edm_pickle(src)
            info.update(meta)
            if meta["class"] not in SUPPORTED_PRECOND:
                raise CheckpointError(f"{src}: preconditioning '{meta['class']}' is not EDM's",
                                      f"import a network with {' or '.join(SUPPORTED_PRECOND)} (EDM's own models)")
            sd = _strip(raw)
            cfg, shape = edm_cfg_from_kwargs(meta["init_kwargs"]) if meta["init_kwargs"] else edm_cfg_from_state(sd)
        else:
            sd = _strip(_read_state_dict(src))
            cfg, shape = edm_cfg_from_state(sd)
        info["c_noise"] = "ln(sigma)/4"
        net = build_net(cfg, shape)
        mapped = sd
    elif kind == "cm":
        from benchmark.nets.cm_keys import cm_config, cm_to_ours

        if not resolution:
            raise ConfigError("--kind cm needs --resolution (openai state dicts do not record it)",
                              "add e.g. --resolution 64 (ImageNet-64) or 256 (LSUN)")
        sd = _read_state_dict(src)
        cfg, shape = cm_config(sd, resolution)
        net = build_net(cfg, shape)
        mapped = cm_to_ours(sd, net, attention)
        info.update(c_noise="1000 ln(sigma)/4 (net.time_scale 1000)", attention=attention)
    else:
        raise ConfigError(f"checkpoint kind '{kind}' is unknown", "use --kind edm or --kind cm")
    state = load_exact(net, mapped, src.name)
    return cfg, shape, state, info


def import_checkpoint(src: Path, kind: str, out: Path, resolution: int | None = None,
                      attention: str = "flash") -> dict[str, Any]:
    """Write `out` in our checkpoint format (benchmark/checkpoint.py: state dicts, sha256 sidecar),
    loadable by `benchmark.runs.load_net_from_ckpt` as a teacher or initialisation."""
    from benchmark import checkpoint
    from benchmark.provenance import sha256_file

    cfg, shape, state, info = convert(src, kind, resolution, attention)
    info.update(path=str(src), sha256=sha256_file(src), params=sum(v.numel() for k, v in state.items()
                                                                      if not k.endswith(("resample_filter", "freqs"))))
    checkpoint.save(Path(out), imported_state(Path(src).name, cfg, shape, state, info))
    return info | {"net_cfg": cfg, "data_shape": list(shape)}


def imported_state(src_name: str, cfg: dict[str, Any], shape, state: dict[str, Tensor], info: dict[str, Any],
                   num_classes: int | None = None) -> dict[str, Any]:
    """The checkpoint dict of an imported network (what `import-checkpoint` saves): run
    'imported:<released file name>', the source info (kind, path, sha256 of the released file),
    no training state. A suite names such a file as a run's `teacher_ckpt:` (benchmark/config.py)."""
    n = int(cfg.get("label_dim", 0)) if num_classes is None else int(num_classes)
    return {"net_cfg": cfg, "data_shape": list(shape), "num_cond": 1, "num_classes": n,
            "ema": state, "net": state, "step": 0, "images_seen": 0, "run": f"imported:{src_name}",
            "config_hash": info["sha256"][:16], "source": info}


# --- an imported network as a suite run's teacher (`teacher_ckpt:`; checked by config.py) -------------

def imported_teacher(key: str, path: str, shape: tuple[int, ...], num_classes: int,
                     conditioning: str, kind: str = "edm") -> dict[str, Any]:
    """Check an experiment's `teacher_ckpt:` (an `import-checkpoint` file, path relative to the
    working directory) before any work: present, matching its sha256 sidecar, an imported network of
    the teacher method's kind (every teacher today is EDM's denoiser, `--kind edm`), and one for the
    run's data shape and class count. Returns {path, sha256, name ('imported:<released
    file name>')}; the sha256 enters the run's config hash."""
    import json

    p = Path(path)
    make = f"python -m benchmark import-checkpoint SRC --kind edm --out {path}"
    if not p.is_file():
        raise ConfigError(f"{key}: teacher_ckpt {path} does not exist (relative to {Path.cwd()})",
                          f"create it from the released network: {make}")
    side = p.with_suffix(p.suffix + ".sha256")
    try:
        recorded = json.loads(side.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        recorded = None
    digest = _file_sha256(p)
    if recorded != digest:
        what = "has no readable sha256 sidecar" if recorded is None else "does not match its sha256 sidecar (corrupt)"
        raise ConfigError(f"{key}: teacher_ckpt {path} {what}", f"re-create it: {make}")
    state = _peek_imported(p, digest)
    name = str(state.get("run") or "")
    if not name.startswith("imported:"):
        raise ConfigError(f"{key}: teacher_ckpt {path} is not an imported network (run {name or '?'})",
                          f"name a teacher run of this suite with `teacher:`, or {make}")
    got = (state.get("source") or {}).get("kind") if isinstance(state.get("source"), dict) else None
    if got != kind:
        raise ConfigError(f"{key}: teacher_ckpt {path} holds a '{got}' network, the method distils an '{kind}' "
                          "teacher", f"import the teacher network with --kind {kind}: {make}")
    if tuple(state["data_shape"]) != tuple(shape):
        raise ConfigError(f"{key}: teacher_ckpt {path} is a network for data of shape {tuple(state['data_shape'])}, "
                          f"the run's dataset has {tuple(shape)}", "import a network of this dataset's resolution")
    if int(state.get("num_classes", 0)) != num_classes:
        raise ConfigError(f"{key}: teacher_ckpt {path} has {int(state.get('num_classes', 0))} classes, the run "
                          f"({conditioning}) needs {num_classes}",
                          "import the network of the run's conditioning or set `conditioning:` to match it")
    return {"path": str(path), "sha256": digest, "name": name, "shapes": state["shapes"]}


def check_init_from(key: str, net: dict[str, Any], imported: dict[str, Any], shape: tuple[int, ...],
                     num_cond: int, num_classes: int) -> None:
    """A student that starts from its imported teacher must have the teacher's tensors, name for name
    and shape for shape (checked on the meta device, so a wrong `net:` fails at validation)."""
    import torch

    from benchmark.nets import build_net

    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in build_net(net, shape, num_cond, num_classes).state_dict().items()}
    theirs = imported["shapes"]
    bad = next((k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)), None)
    if bad is not None:
        raise ConfigError(f"{key}: its `net:` cannot start from teacher_ckpt {imported['path']} (tensor '{bad}': "
                          f"ours {ours.get(bad, 'absent')}, the checkpoint's {theirs.get(bad, 'absent')})",
                          "set `net:` to the imported network's architecture (import-checkpoint prints it)")


_PEEKED: dict[str, dict[str, Any]] = {}
_DIGESTS: dict[tuple, str] = {}


def _file_sha256(p: Path) -> str:
    """sha256 of a file, hashed once per (path, size, mtime, ctime, inode) in this process: a suite's experiments
    (CD, ECT, PD of one suite) usually share one ~200 MB teacher file."""
    from benchmark.provenance import sha256_file

    st = p.stat()
    key = (str(p.resolve()), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    if key not in _DIGESTS:
        _DIGESTS[key] = sha256_file(p)
    return _DIGESTS[key]


def _peek_imported(p: Path, digest: str) -> dict[str, Any]:
    """An imported checkpoint's header fields (memory-mapped, cheap), once per content hash."""
    if digest not in _PEEKED:
        import torch

        try:
            st = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - any unpickling failure: not a checkpoint we wrote
            raise ConfigError(f"teacher_ckpt {p} cannot be read ({type(e).__name__})",
                              f"re-create it: python -m benchmark import-checkpoint SRC --kind edm --out {p}") from e
        if not isinstance(st, dict) or "data_shape" not in st:
            raise ConfigError(f"teacher_ckpt {p} is not a fewstep-bench checkpoint",
                              f"create it with python -m benchmark import-checkpoint SRC --kind edm --out {p}")
        _PEEKED[digest] = {k: st.get(k) for k in ("run", "data_shape", "num_classes", "net_cfg", "source")}
        ema = st.get("ema") if isinstance(st.get("ema"), dict) else {}
        _PEEKED[digest]["shapes"] = {k: tuple(v.shape) for k, v in ema.items()}
    return _PEEKED[digest]
