"""Speed options (issues 16, 26): each is a suite option, recorded as requested/applied; on CPU bf16,
channels_last and TF32 are recorded no-ops, torch.compile applies (tests/test_compile.py); on CUDA
bf16 autocast keeps fp32 weights."""

from __future__ import annotations

import pytest
import torch

from benchmark.errors import ConfigError
from benchmark.nets import build_net
from benchmark.precision import Precision, apply, to_layout
from benchmark.train_config import TrainConfig
from benchmark.train_step import make_optimizer, train_step
from methods.edm import EDM

ALL = {"bf16": True, "channels_last": True, "compile": True, "tf32": True}


def test_requested_gpu_options_are_recorded_as_no_ops_on_cpu_and_compile_applies():
    net = build_net({"type": "unet", "model_channels": 8, "channel_mult": [1, 2]}, (1, 8, 8), 1)
    a = apply(Precision.from_config(ALL), net, "cpu")
    rec = a.record()
    assert rec["requested"] == ALL
    assert rec["applied"] == {"bf16": False, "channels_last": False, "compile": True, "tf32": False}
    assert all("CPU" in rec["notes"][k] for k in ("bf16", "channels_last", "tf32")) and "compile" not in rec["notes"]
    x = torch.randn(2, 1, 8, 8)
    assert to_layout(x, a) is x  # no channels_last on CPU: batch and weights keep their layout
    assert all(p.is_contiguous() for p in net.parameters())


def test_unknown_precision_option_is_a_one_line_config_error():
    with pytest.raises(ConfigError, match="unknown precision option"):
        Precision.from_config({"fp8": True})


def test_suite_precision_section_is_validated_and_read():
    from benchmark.config import load_suite

    s = load_suite("smoke", {"precision": {"bf16": True}, "distributed": {"batch_per_gpu": 32}})
    assert s.precision == {"bf16": True} and s.distributed == {"batch_per_gpu": 32}
    with pytest.raises(ConfigError):
        load_suite("smoke", {"precision": {"bf16": "yes"}})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast / channels_last apply on CUDA only")
def test_bf16_channels_last_step_on_cuda_keeps_fp32_master_weights():
    torch.manual_seed(0)
    net = build_net({"type": "unet", "model_channels": 16, "channel_mult": [1, 2]}, (3, 16, 16), 1).cuda()
    a = apply(Precision(bf16=True, channels_last=True, tf32=True), net, "cuda")
    assert a.applied["bf16"] and a.applied["channels_last"] and a.applied["tf32"]
    cfg = TrainConfig(images=64, batch=16, lr=1e-3)
    opt = make_optimizer(cfg, net.parameters())
    data = torch.randn(64, 3, 16, 16, device="cuda").clamp(-1, 1)
    loss = train_step(EDM(total_steps=4, data_shape=(3, 16, 16)), net, opt, data, cfg, 0, seed=0, amp=a)
    assert loss == loss and all(p.dtype == torch.float32 for p in net.parameters())
