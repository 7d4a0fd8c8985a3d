"""Importing released networks: an EDM/ECT network pickle (read without importing or executing
anything it names), an EDM state dict, and an openai consistency-models state dict all become
our checkpoint format and compute the same function; a wrong shape or an unmapped key is a
one-line error naming the key.

The files are written here in the official formats: the EDM pickle by pickling modules the way
`torch_utils.persistence` does (each module reduced to `_reconstruct_persistent_obj(meta)` with
its class name, source code and state), the openai state dict from the documented list of
`UNetModel` names and shapes in `openai_adm_state_dict`."""

from __future__ import annotations

import math
import pickle
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from benchmark import checkpoint
from benchmark.cli import main
from benchmark.errors import CheckpointError
from benchmark.import_ckpt import convert, import_checkpoint
from benchmark.nets import build_net
from benchmark.nets.cm_keys import _qkv_perm
from benchmark.nets.layers import UNetBlock
from benchmark.runs import load_net_from_ckpt

SONG = dict(model_channels=16, channel_mult=[1, 2], num_blocks=1, attn_resolutions=[8], dropout=0.0,
            embedding_type="fourier", channel_mult_noise=2, encoder_type="residual", decoder_type="standard",
            resample_filter=[1, 3, 3, 1], augment_dim=9)


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomised(net: nn.Module) -> nn.Module:
    """Random weights (the released inits make outputs ~1e-5, too small to compare)."""
    torch.manual_seed(1)
    for p in net.parameters():
        nn.init.normal_(p, std=0.1)
    return net.eval()


class EDMPrecond(nn.Module):  # stands in for EDM's wrapper: the raw net as `.model`
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model


def _write_edm_pickle(path, precond: nn.Module, init_kwargs: dict, marker) -> None:
    """Pickle {'ema': precond, ...} as EDM's persistence module does, plus a global that would
    run a shell command if anything were executed."""
    pkg, mod = types.ModuleType("torch_utils"), types.ModuleType("torch_utils.persistence")

    def _reconstruct_persistent_obj(meta):  # never called: the importer must not need it
        raise AssertionError("official code path used")

    _reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
    _reconstruct_persistent_obj.__qualname__ = "_reconstruct_persistent_obj"
    mod._reconstruct_persistent_obj = _reconstruct_persistent_obj
    sys.modules.update({"torch_utils": pkg, "torch_utils.persistence": mod})

    class Pickler(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, nn.Module):
                state = dict(obj.__dict__, _init_kwargs=init_kwargs if obj is precond else {}, _init_args=())
                meta = dict(type="class", version=6, module_src="raise SystemExit('official code executed')",
                            class_name=type(obj).__name__, state=state)
                return _reconstruct_persistent_obj, (meta,)
            return NotImplemented

    class Evil:
        def __reduce__(self):
            import os

            return os.system, (f"touch {marker}",)

    try:
        with open(path, "wb") as f:
            Pickler(f, protocol=4).dump({"ema": precond, "loss_fn": Evil(), "augment_pipe": None,
                                         "dataset_kwargs": {"resolution": 16}})
    finally:
        del sys.modules["torch_utils"], sys.modules["torch_utils.persistence"]


def test_edm_pickle_imports_without_executing_anything_and_computes_the_same(tmp_path):
    net = _randomised(build_net({"type": "songunet", **SONG}, (3, 16, 16)))
    kwargs = dict(img_resolution=16, img_channels=3, label_dim=0, use_fp16=False, sigma_data=0.5,
                  model_type="SongUNet", **{**SONG, "dropout": np.float64(0.13)})
    marker = tmp_path / "pwned"
    _write_edm_pickle(tmp_path / "edm.pkl", EDMPrecond(net), kwargs, marker)
    info = import_checkpoint(tmp_path / "edm.pkl", "edm", tmp_path / "ckpt.pt")
    assert not marker.exists() and "torch_utils" not in sys.modules
    assert info["class"] == "EDMPrecond" and info["net_cfg"]["encoder_type"] == "residual"
    assert info["net_cfg"]["dropout"] == 0.13 and type(info["net_cfg"]["dropout"]) is float
    assert "posix.system" in info["recorded"] or "nt.system" in info["recorded"]
    ours = load_net_from_ckpt(checkpoint.load(tmp_path / "ckpt.pt"))
    x, c = torch.randn(2, 3, 16, 16), torch.randn(2)
    assert torch.equal(ours(x, c), net(x, c))
    assert torch.equal(ours.map_noise.freqs, net.map_noise.freqs)  # NCSN++'s random Fourier frequencies


def test_edm_state_dict_architecture_is_inferred_from_keys_and_labels_carry_over(tmp_path):
    cfg = {"type": "adm", "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 2, "attn_resolutions": [8],
           "dropout": 0.0}
    net = _randomised(build_net(cfg, (3, 16, 16), num_classes=5))
    torch.save({f"model.{k}": v for k, v in net.state_dict().items()}, tmp_path / "edm.pt")
    assert main(["import-checkpoint", str(tmp_path / "edm.pt"), "--kind", "edm", "--out", str(tmp_path / "c.pt")]) == 0
    state = checkpoint.load(tmp_path / "c.pt")
    del cfg["dropout"]  # a training option, not in a state dict: our default applies
    assert state["net_cfg"] == {**cfg, "channel_mult_emb": 4, "label_dim": 5}
    assert state["num_classes"] == 5 and state["data_shape"] == [3, 16, 16]
    ours = load_net_from_ckpt(state)
    x, c, y = torch.randn(2, 3, 16, 16), torch.randn(2), torch.eye(5)[[0, 4]]
    assert torch.equal(ours(x, c, y), net(x, c, y))


def test_ddpmpp_state_dict_round_trips_through_inference(tmp_path):
    cfg = {"type": "ddpmpp", "model_channels": 16, "channel_mult": [1, 2, 2], "num_blocks": 1,
           "attn_resolutions": [8], "augment_dim": 9}
    net = build_net(cfg, (3, 16, 16))
    torch.save({f"model.{k}": v for k, v in net.state_dict().items()}, tmp_path / "edm.pt")
    got, shape, _, _ = convert(tmp_path / "edm.pt", "edm")
    assert shape == (3, 16, 16)
    assert got == {"type": "songunet", "model_channels": 16, "channel_mult": [1, 2, 2], "num_blocks": 1,
                   "attn_resolutions": [8], "channel_mult_emb": 4, "augment_dim": 9, "embedding_type": "positional",
                   "channel_mult_noise": 1, "encoder_type": "standard", "decoder_type": "standard",
                   "resample_filter": [1, 1]}


@pytest.mark.parametrize("damage,match", [
    (lambda sd: sd.__setitem__("model.dec.8x8_block0.conv0.weight", torch.zeros(3, 3, 3, 3)),
     "key 'dec.8x8_block0.conv0.weight' has shape"),
    (lambda sd: sd.__setitem__("model.extra.weight", torch.zeros(1)), "key 'extra.weight' has no counterpart"),
    (lambda sd: sd.pop("model.map_layer1.bias"), "'map_layer1.bias' is not in the checkpoint"),
])
def test_a_wrong_shape_or_unmapped_key_is_a_one_line_error_naming_it(tmp_path, capsys, damage, match):
    net = build_net({"type": "adm", "model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1,
                     "attn_resolutions": [8]}, (3, 16, 16))
    sd = {f"model.{k}": v for k, v in net.state_dict().items()}
    damage(sd)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=match):
        convert(tmp_path / "bad.pt", "edm")
    assert main(["import-checkpoint", str(tmp_path / "bad.pt"), "--kind", "edm", "--out", str(tmp_path / "o.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and not (tmp_path / "o.pt").exists()


# --- openai consistency-models (guided-diffusion UNetModel) state dicts ------------------------

def openai_adm_state_dict(mc=16, mult=(1, 2), nrb=1, attn_ds=(2,), classes=3, in_ch=3, scale_shift=True):
    """Names and shapes of openai's UNetModel (cm/unet.py) with resblock_updown, heads of 64 ch."""
    shapes, emb = {}, 4 * mc

    def lin(name, o, i, k=()):
        shapes[f"{name}.weight"], shapes[f"{name}.bias"] = (o, i, *k), (o,)

    def res(p, ci, co):
        shapes[f"{p}.in_layers.0.weight"] = shapes[f"{p}.in_layers.0.bias"] = (ci,)
        lin(f"{p}.in_layers.2", co, ci, (3, 3))
        lin(f"{p}.emb_layers.1", co * (2 if scale_shift else 1), emb)
        shapes[f"{p}.out_layers.0.weight"] = shapes[f"{p}.out_layers.0.bias"] = (co,)
        lin(f"{p}.out_layers.3", co, co, (3, 3))
        if ci != co:
            lin(f"{p}.skip_connection", co, ci, (1, 1))

    def attn(p, ch):
        shapes[f"{p}.norm.weight"] = shapes[f"{p}.norm.bias"] = (ch,)
        lin(f"{p}.qkv", 3 * ch, ch, (1,))
        lin(f"{p}.proj_out", ch, ch, (1,))

    lin("time_embed.0", emb, mc)
    lin("time_embed.2", emb, emb)
    shapes["label_emb.weight"] = (classes, emb)
    lin("input_blocks.0.0", mc * mult[0], in_ch, (3, 3))
    chans, ch, ds, k = [mc * mult[0]], mc * mult[0], 1, 1
    for lvl, m in enumerate(mult):
        for _ in range(nrb):
            res(f"input_blocks.{k}.0", ch, mc * m)
            ch = mc * m
            if ds in attn_ds:
                attn(f"input_blocks.{k}.1", ch)
            chans.append(ch)
            k += 1
        if lvl < len(mult) - 1:
            res(f"input_blocks.{k}.0", ch, ch)
            chans.append(ch)
            ds, k = ds * 2, k + 1
    res("middle_block.0", ch, ch)
    attn("middle_block.1", ch)
    res("middle_block.2", ch, ch)
    k = 0
    for lvl, m in reversed(list(enumerate(mult))):
        for i in range(nrb + 1):
            res(f"output_blocks.{k}.0", ch + chans.pop(), mc * m)
            ch, j = mc * m, 1
            if ds in attn_ds:
                attn(f"output_blocks.{k}.1", ch)
                j = 2
            if lvl and i == nrb:
                res(f"output_blocks.{k}.{j}", ch, ch)
                ds //= 2
            k += 1
    shapes["out.0.weight"] = shapes["out.0.bias"] = (ch,)
    lin("out.2", in_ch, ch, (3, 3))
    gen = torch.Generator().manual_seed(0)
    return {name: torch.randn(shape, generator=gen) * 0.1 for name, shape in shapes.items()}


@pytest.mark.parametrize("scale_shift", [True, False])
def test_openai_cm_state_dict_maps_key_by_key_and_runs(tmp_path, scale_shift):
    sd = openai_adm_state_dict(mult=(1, 2, 2), nrb=2, attn_ds=(2, 4), scale_shift=scale_shift)
    torch.save(sd, tmp_path / "cd_imagenet.pt")
    info = import_checkpoint(tmp_path / "cd_imagenet.pt", "cm", tmp_path / "c.pt", resolution=16)
    assert info["params"] == sum(v.numel() for v in sd.values())  # every openai tensor has a home, and no more
    cfg = info["net_cfg"]
    assert (cfg["channel_mult"], cfg["num_blocks"], cfg["attn_resolutions"]) == ([1, 2, 2], 2, [8, 4])
    assert cfg["adaptive_scale"] is scale_shift and cfg["label_dim"] == 3 and cfg["time_scale"] == 1000.0
    net = load_net_from_ckpt(checkpoint.load(tmp_path / "c.pt"))
    assert torch.equal(net.map_label.weight, sd["label_emb.weight"].t())  # embedding row = one-hot product
    assert torch.equal(net.dec["4x4_in1"].conv1.weight, sd["middle_block.2.out_layers.3.weight"])
    assert torch.equal(net.dec["8x8_up"].conv0.weight, sd["output_blocks.2.2.in_layers.2.weight"])
    y = net(torch.randn(2, 3, 16, 16), torch.randn(2), torch.eye(3)[:2])
    assert y.shape == (2, 3, 16, 16) and torch.isfinite(y).all()


def test_cm_without_resolution_or_with_an_extra_key_is_a_one_line_error(tmp_path):
    sd = openai_adm_state_dict()
    torch.save({**sd, "input_blocks.9.9.weight": torch.zeros(1)}, tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="openai key 'input_blocks.9.9.weight' has no counterpart"):
        convert(tmp_path / "x.pt", "cm", resolution=16)
    assert main(["import-checkpoint", str(tmp_path / "x.pt"), "--kind", "cm", "--out", str(tmp_path / "o")]) == 2


@pytest.mark.parametrize("layout", ["flash", "legacy"])
def test_qkv_rows_are_reordered_so_attention_equals_openais(layout):
    """Our attention with the reordered weights equals openai's QKV attention on its own weights."""
    torch.manual_seed(0)
    C, heads, d = 128, 2, 64
    norm = nn.GroupNorm(32, C)
    qkv_w, qkv_b = torch.randn(3 * C, C, 1) * 0.1, torch.randn(3 * C) * 0.1
    proj_w, proj_b = torch.randn(C, C, 1) * 0.1, torch.randn(C) * 0.1
    x = torch.randn(2, C, 4, 4)
    qkv = F.conv1d(norm(x).reshape(2, C, 16), qkv_w, qkv_b)  # openai: [B, 3C, T]
    if layout == "flash":  # (q/k/v, head, channel)
        q, k, v = qkv.reshape(2, 3, heads, d, 16).unbind(1)
    else:  # legacy: (head, q/k/v, channel)
        q, k, v = qkv.reshape(2, heads, 3, d, 16).unbind(2)
    w = torch.softmax(torch.einsum("bhct,bhcs->bhts", q, k) / math.sqrt(d), dim=-1)
    a = torch.einsum("bhts,bhcs->bhct", w, v).reshape(2, C, 16)
    expected = x + F.conv1d(a, proj_w, proj_b).reshape(x.shape)

    blk = UNetBlock(C, C, 8, attention=True).eval()  # zero conv1 (released init): the res part is the identity
    perm = _qkv_perm(C, heads, layout)
    blk.norm2.load_state_dict(norm.state_dict())
    with torch.no_grad():
        blk.qkv.weight.copy_(qkv_w[perm][..., None])
        blk.qkv.bias.copy_(qkv_b[perm])
        blk.proj.weight.copy_(proj_w[..., None])
        blk.proj.bias.copy_(proj_b)
    torch.testing.assert_close(blk(x, torch.zeros(2, 8)), expected, rtol=1e-5, atol=1e-5)


def test_an_imported_edm_network_initialises_a_student_built_from_the_suite_preset(tmp_path):
    """ECT/CD start from the teacher's weights: a student built as `type: ddpmpp` (the suite's
    preset) loads the imported `type: songunet` checkpoint, key for key."""
    tiny = {"model_channels": 16, "channel_mult": [1, 2], "num_blocks": 1, "attn_resolutions": [8], "augment_dim": 9}
    net = _randomised(build_net({"type": "ddpmpp", **tiny}, (3, 16, 16)))
    torch.save({f"model.{k}": v for k, v in net.state_dict().items()}, tmp_path / "edm.pt")
    import_checkpoint(tmp_path / "edm.pt", "edm", tmp_path / "c.pt")
    student = build_net({"type": "ddpmpp", **tiny, "dropout": 0.2}, (3, 16, 16)).eval()
    student.load_state_dict(checkpoint.load(tmp_path / "c.pt")["ema"])
    x, c = torch.randn(2, 3, 16, 16), torch.randn(2)
    assert torch.equal(student(x, c), net(x, c))
