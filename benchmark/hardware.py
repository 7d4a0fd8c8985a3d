"""The one device table: dense peak FLOP/s per precision and memory of the devices a plan or an MFU
figure is computed for, and the measured-MFU record `make perf` writes (`results/perf/measured.json`).

Peaks are the vendors' *dense* numbers (no 2:4 sparsity), in FLOP/s, for the datasheets' SXM parts:
- A100 (40 GB HBM2 / 80 GB HBM2e): FP32 19.5, TF32 156, BF16 312 TFLOP/s (NVIDIA A100 datasheet,
  nvidia-a100-datasheet-us-nvidia-1758950-r4-web.pdf; the same table in glennklockwood.com/garden/processors/A100).
- H100 SXM5 80 GB: FP32 66.9, TF32 494.7, BF16 989.4 TFLOP/s (NVIDIA H100 datasheet: 989 / 1,979 TFLOP/s
  BF16 dense / with sparsity; glennklockwood.com/garden/processors/h100).
- H200 SXM 141 GB: the H100's GH100 die and clocks with HBM3e, so the same peaks (NVIDIA H200 datasheet:
  BF16 1,979 TFLOP/s with sparsity = 989 dense; FP32 67).
- V100 SXM2 16 / 32 GB: FP32 15.7, FP16 tensor 125 TFLOP/s, no bf16 and no TF32 (NVIDIA V100 datasheet;
  developer.nvidia.com/programming-tensor-cores-cuda-9-0: "up to 125 Tensor TFLOPS").
- H100 PCIe 80 GB: FP32 51.2, TF32 378, BF16 756 TFLOP/s dense (NVIDIA H100 datasheet, PCIe column: 756 / 1,513
  with sparsity); H100 NVL 94 GB: FP32 60, TF32 417.5, BF16 835.5 dense (datasheet NVL column: 835 / 1,671 sparse).
- L40S 48 GB: FP32 91.6, TF32 183, BF16 362.05 TFLOP/s dense (NVIDIA L40S datasheet: 366 / 733 with sparsity).
- L4 24 GB: FP32 30.3, TF32 60, BF16 121 TFLOP/s dense (NVIDIA L4 datasheet: 120 / 242 with sparsity).
- TPU v5e 16 GB: 197 TFLOP/s bf16 per chip (cloud.google.com/tpu/docs/v5e, "Peak compute per chip (bf16)"); no
  fp32 or TF32 matrix peak: an fp32 plan on it runs at the bf16 peak, as XLA's default matmul precision does.
- cpu: no vendor figure applies to "a CPU"; a nominal 32 fp32 FLOP/cycle per core (2 AVX2 FMA units x 8
  lanes x 2) at 3 GHz x the cores of this machine, and this machine's RAM. A plan on `cpu` says so.

GiB are 2**30 bytes; the datasheets' "80 GB" HBM is 80 GiB usable minus what the driver keeps, which
the plan's fit check leaves as headroom (`FIT_FRACTION`).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmark.errors import ConfigError

T = 1e12
GIB = 2**30
DEFAULT_MFU = 0.40  # the planner's assumption where nothing was measured on the device
FIT_FRACTION = 0.90  # a run fits when its planned peak is <= 90 % of the device memory (CUDA context, fragmentation)
MEASURED_PATH = Path("results") / "perf" / "measured.json"  # written by tests/perf/test_gpu_efficiency.py


@dataclass(frozen=True)
class Device:
    """One device kind: dense peaks in FLOP/s per precision (None: the precision has no fast path)."""

    key: str
    name: str
    memory_bytes: int
    fp32: float | None
    tf32: float | None
    bf16: float | None
    cuda_names: tuple[str, ...] = ()  # substrings of torch.cuda.get_device_name() that mean this device

    def peak(self, precision: str) -> float:
        """Peak FLOP/s of `precision` (bf16 / tf32 / fp32); a one-line error where the device has none."""
        value = {"bf16": self.bf16, "tf32": self.tf32, "fp32": self.fp32}.get(precision)
        if value is None:
            raise ConfigError(f"device '{self.key}' ({self.name}) has no {precision} peak (no {precision} "
                              "tensor cores)", "plan with --precision fp32, or name a device that has it")
        return value


CPU_CORE_PEAK = 32 * 3e9  # nominal fp32 FLOP/s of one core: 2 AVX2 FMA units x 8 lanes x 2 FLOPs x 3 GHz


def cpu_device(cores: int | None = None) -> Device:
    """The `cpu` entry for `cores` cores (default: this machine's) and this machine's RAM."""
    cores = cores or os.cpu_count() or 1
    try:
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        mem = 16 * GIB
    return Device("cpu", f"CPU ({cores} cores, nominal {CPU_CORE_PEAK / 1e9:.0f} GFLOP/s per core)", int(mem),
                  cores * CPU_CORE_PEAK, None, None)


DEVICES: dict[str, Device] = {d.key: d for d in (
    Device("a100-40gb", "NVIDIA A100 40GB", 40 * GIB, 19.5 * T, 156 * T, 312 * T, ("A100-SXM4-40GB", "A100-PCIE-40GB")),
    Device("a100-80gb", "NVIDIA A100 80GB", 80 * GIB, 19.5 * T, 156 * T, 312 * T, ("A100",)),
    Device("h100-80gb", "NVIDIA H100 80GB SXM", 80 * GIB, 66.9 * T, 494.7 * T, 989.4 * T, ("H100",)),
    Device("h200", "NVIDIA H200 141GB SXM", 141 * GIB, 66.9 * T, 494.7 * T, 989.4 * T, ("H200",)),
    Device("v100-16gb", "NVIDIA V100 16GB SXM2", 16 * GIB, 15.7 * T, None, None, ("V100-SXM2-16GB", "V100-PCIE-16GB")),
    Device("v100-32gb", "NVIDIA V100 32GB SXM2", 32 * GIB, 15.7 * T, None, None, ("V100",)),
    Device("h100-pcie", "NVIDIA H100 80GB PCIe", 80 * GIB, 51.2 * T, 378 * T, 756 * T, ("H100 PCIe",)),
    Device("h100-nvl", "NVIDIA H100 NVL 94GB", 94 * GIB, 60 * T, 417.5 * T, 835.5 * T, ("H100 NVL",)),
    Device("l40s", "NVIDIA L40S 48GB", 48 * GIB, 91.6 * T, 183 * T, 362.05 * T, ("L40S",)),
    Device("l4", "NVIDIA L4 24GB", 24 * GIB, 30.3 * T, 60 * T, 121 * T, ("L4",)),
    Device("tpu-v5e", "Google Cloud TPU v5e", 16 * GIB, None, None, 197 * T),
    cpu_device(),
)}


# Device names the papers' budgets use (config/paper_results.csv `train_hardware`) that leave the memory
# variant open: both variants have the same peaks, which is all a budget comparison reads.
PAPER_ALIASES = {"a100": "a100-80gb", "v100": "v100-32gb", "h100": "h100-80gb"}


def paper_device_key(name: str) -> str:
    """Our key for a paper's device name (`a100` -> `a100-80gb`); the name itself otherwise."""
    n = str(name).strip().lower()
    return PAPER_ALIASES.get(n, n)


def device(key: str) -> Device:
    """The table entry of `key`; a one-line error naming the known keys otherwise."""
    if key not in DEVICES:
        raise ConfigError(f"unknown device '{key}'", f"use one of: {', '.join(DEVICES)}")
    return DEVICES[key]


def parse_hardware(spec: str) -> tuple[Device, int]:
    """`NAME[:COUNT]` (e.g. `a100-80gb:8`) -> (device, count >= 1)."""
    name, _, count = str(spec).partition(":")
    dev = device(name.strip().lower())
    if not count:
        return dev, 1
    if not count.isdigit() or int(count) < 1:
        raise ConfigError(f"device count '{count}' in --hardware {spec} is not an integer >= 1",
                          "write NAME:COUNT, e.g. a100-80gb:8")
    return dev, int(count)


def key_for_cuda_name(name: str) -> str | None:
    """Our key for a torch.cuda.get_device_name() string: the most specific (longest) matching pattern."""
    hits = [(len(p), d.key) for d in DEVICES.values() for p in d.cuda_names if p in name]
    return max(hits)[1] if hits else None


def key_for_hardware(hw: Any) -> str | None:
    """Our key for the `hardware` string of a compute.json (benchmark.provenance.hardware:
    "NVIDIA A100-SXM4-80GB x8" on CUDA, "cpu:x86_64 threads=2" on CPU); None for an unknown GPU."""
    text = str(hw or "")
    if text.startswith("cpu"):
        return "cpu"
    return key_for_cuda_name(text) if text else None


def peak_bf16_for_cuda_name(name: str) -> float | None:
    """Dense bf16 peak (FLOP/s) of a CUDA device by its torch.cuda.get_device_name(); None if unknown."""
    key = key_for_cuda_name(name)
    return DEVICES[key].bf16 if key else None


def measured_record(key: str, mfu_bf16: float | None, mfu_fp32: float | None, net: str, command: str) -> dict[str, Any]:
    """One device's entry of results/perf/measured.json (the planner's default MFU for that device)."""
    import datetime

    from benchmark.provenance import git_commit

    return {key: {"mfu_bf16": mfu_bf16, "mfu_fp32": mfu_fp32, "net": net,
                  "measured_at": datetime.date.today().isoformat(), "command": command, "git_commit": git_commit()}}


def write_measured(record: dict[str, Any], path: Path = MEASURED_PATH) -> None:
    """Merge `record` into the measured-MFU file (other devices' entries kept), atomically."""
    from benchmark.provenance import write_json

    write_json(Path(path), {**read_measured(path), **record})


def device_for_hardware(hw: Any) -> Device | None:
    """The table device a compute.json's `hardware` string ran on; a CPU run counts the threads it used
    ("cpu:x86_64 threads=2" -> 2 cores), so the report does not depend on the machine that builds it."""
    key = key_for_hardware(hw)
    if key != "cpu":
        return DEVICES.get(key) if key else None
    threads = str(hw).rpartition("threads=")[2]
    return cpu_device(int(threads) if threads.isdigit() else 1)


def read_measured(path: Path = MEASURED_PATH) -> dict[str, Any]:
    """The measured-MFU record (device key -> {mfu_bf16, mfu_fp32, net, measured_at, command, git_commit});
    {} when absent or unreadable (the plan then says its MFU is assumed)."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def default_mfu(key: str, precision: str, measured: dict[str, Any]) -> tuple[float, str]:
    """(MFU, where it comes from): the measured one of this device and precision, else DEFAULT_MFU."""
    rec = measured.get(key) or {}
    value = rec.get("mfu_bf16" if precision == "bf16" else "mfu_fp32") if isinstance(rec, dict) else None
    if isinstance(value, (int, float)) and 0 < value <= 1:
        return float(value), f"measured by `make perf` on {rec.get('measured_at', '?')} ({rec.get('net', '?')})"
    return DEFAULT_MFU, "assumed"
