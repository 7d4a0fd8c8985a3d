"""GPU efficiency of the CIFAR-10 training step (issue 16): images/s, achieved FLOP/s and model
FLOP utilisation (MFU) in bf16 autocast (fp32 master weights, channels_last, TF32), and the
ratio against a bare PyTorch loop on the same network (plain MSE step, same autocast/layout).

Run with `make perf` on a CUDA machine; on CPU the benchmark is skipped with its reason.
The network is DDPM++ (SongUNet, the EDM CIFAR-10 net) when benchmark.nets provides it, else the
small UNet at CIFAR-10 size. Neither loop updates an EMA (the same work on both sides).
FLOPs follow benchmark.compute's convention (FlopCounterMode: 2 per multiply-accumulate,
forward + backward to the parameters); MFU = achieved FLOP/s / the device's dense bf16 peak
(benchmark/hardware.py, the one device table). On a device of that table the MFU is recorded in
results/perf/measured.json, where `benchmark plan` takes its default MFU for the device from.
"""

from __future__ import annotations

import copy
import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from benchmark.compute import DeviceTimer, fwd_bwd_flops
from benchmark.errors import ConfigError
from benchmark.hardware import (
    default_mfu,
    key_for_cuda_name,
    measured_record,
    peak_bf16_for_cuda_name,
    write_measured,
)
from benchmark.nets import build_net
from benchmark.precision import Precision, apply, to_layout
from benchmark.train_config import TrainConfig
from benchmark.train_step import make_optimizer, train_step
from methods.edm import EDM

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device: MFU is measured against a GPU's bf16 peak")

SHAPE, BATCH, STEPS_PER_ROUND, ROUNDS, WARMUP = (3, 32, 32), 256, 10, 8, 2


def test_peak_table_finds_the_specific_device_name_first():
    """The peaks come from benchmark/hardware.py (the one device table, sourced there)."""
    assert peak_bf16_for_cuda_name("NVIDIA H200") == 989.4e12
    assert peak_bf16_for_cuda_name("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_for_cuda_name("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_bf16_for_cuda_name("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_for_cuda_name("NVIDIA L4") == 121e12 and peak_bf16_for_cuda_name("NVIDIA L40S") == 362.05e12
    assert peak_bf16_for_cuda_name("Tesla V100-SXM2-32GB") is None and peak_bf16_for_cuda_name("cpu") is None


def test_measured_record_merges_one_device_entry_into_the_file(tmp_path):
    path = tmp_path / "measured.json"
    write_measured(measured_record("h200", 0.41, None, "SongUNet", "make perf"), path)
    write_measured(measured_record("a100-80gb", 0.33, None, "SongUNet", "make perf"), path)
    data = json.loads(path.read_text())
    assert set(data) == {"h200", "a100-80gb"} and data["h200"]["mfu_bf16"] == 0.41
    assert set(data["h200"]) == {"mfu_bf16", "mfu_fp32", "net", "measured_at", "command", "git_commit"}
    assert default_mfu("h200", "bf16", data)[0] == 0.41


def cifar_net() -> torch.nn.Module:
    """DDPM++ at CIFAR-10 size if this checkout has it, else the small UNet at the same size."""
    try:
        return build_net({"type": "ddpmpp"}, SHAPE, 1)
    except ConfigError:
        return build_net({"type": "unet", "model_channels": 128, "channel_mult": [2, 2, 2], "num_blocks": 4,
                          "attn_resolutions": [16]}, SHAPE, 1)


@pytest.mark.perf
@needs_cuda
def test_cifar10_training_step_bf16_images_per_second_and_mfu(benchmark, perf_row):
    torch.manual_seed(0)
    net0 = cifar_net()
    flops_per_image = fwd_bwd_flops(net0, SHAPE)  # fp32 CPU copy: the count does not depend on dtype
    data = torch.randn(8192, *SHAPE, device="cuda").clamp(-1, 1)
    prec = Precision(bf16=True, channels_last=True, tf32=True)

    net = copy.deepcopy(net0).cuda().train()
    amp = apply(prec, net, "cuda")
    method, cfg = EDM(total_steps=1, data_shape=SHAPE), TrainConfig(images=10**9, batch=BATCH, lr=1e-4)
    opt, counter = make_optimizer(cfg, net.parameters()), itertools.count()

    def ours():
        for _ in range(STEPS_PER_ROUND):
            train_step(method, net, opt, data, cfg, next(counter), seed=0, amp=amp)
        torch.cuda.synchronize()

    bare_net = copy.deepcopy(net0).cuda().train()
    apply(prec, bare_net, "cuda")
    bare_opt = torch.optim.Adam(bare_net.parameters(), lr=1e-4, foreach=True)
    t_bare: list[float] = []

    def bare():
        with DeviceTimer("cuda") as t:
            for _ in range(STEPS_PER_ROUND):
                x0 = to_layout(data[torch.randint(0, len(data), (BATCH,), device="cuda")], amp)
                sigma = torch.rand(BATCH, device="cuda") + 0.01
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = bare_net(x0 + sigma[:, None, None, None] * torch.randn_like(x0), sigma.log() / 4)
                loss = F.mse_loss(out.float(), x0)
                bare_opt.zero_grad(set_to_none=True)
                loss.backward()
                bare_opt.step()
                float(loss)  # train_step returns the loss as a float: the same host sync
        t_bare.append(t.seconds)

    benchmark.group = "train-cifar10-bf16"
    benchmark.pedantic(ours, setup=bare, rounds=ROUNDS, warmup_rounds=WARMUP)
    if benchmark.stats is None:
        return
    t_ours = benchmark.stats.stats.min / STEPS_PER_ROUND
    t_b = min(t_bare[WARMUP:]) / STEPS_PER_ROUND
    name = torch.cuda.get_device_name()
    peak = peak_bf16_for_cuda_name(name)
    achieved = flops_per_image * BATCH / t_ours
    info = {"device": name, "net": type(net0).__name__, "params": sum(p.numel() for p in net0.parameters()),
            "batch": BATCH, "img_per_s": BATCH / t_ours, "img_per_s_bare_loop": BATCH / t_b,
            "ratio_vs_bare_loop": t_b / t_ours, "achieved_tflop_per_s": achieved / 1e12,
            "peak_bf16_tflop_per_s": peak / 1e12 if peak else None, "mfu": achieved / peak if peak else None,
            "precision": amp.record()}
    benchmark.extra_info.update(info)
    key = key_for_cuda_name(name)
    if key and info["mfu"] is not None:  # the planner's default MFU for this device (benchmark plan)
        write_measured(measured_record(key, info["mfu"], None, info["net"],
                                       "make perf (tests/perf/test_gpu_efficiency.py, bf16 autocast, batch 256)"))
    perf_row(case=f"cifar10 {info['net']} bf16 b{BATCH}", device=name, ratio=info["ratio_vs_bare_loop"],
             vs="bare PyTorch loop, same net", MFU=info["mfu"],
             **{"img/s": info["img_per_s"], "GFLOP/s": achieved / 1e9})
    assert info["ratio_vs_bare_loop"] > 0.5
