"""Sharded, memory-mapped prepared data: writer/reader round trip, the (seed, step) batch contract
through a DataLoader with workers and per-rank slices, bounded peak memory of prepare and of
reading, and prepare as a DAG node that notices changed raw data."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmark.data import load_labels, load_manifest, load_split, to_model_space
from benchmark.data.shards import ShardWriter, batch_for_rank, step_loader
from benchmark.errors import DatasetError
from benchmark.prepare import prepare_dataset, raw_fingerprint

REPO = Path(__file__).resolve().parents[1]


def _jpeg_classes(root: Path, n: int, size: int, classes: int = 3) -> None:
    """`n` smooth JPEGs (`size` px) spread over `classes` class folders."""
    yy, xx = np.mgrid[0:size, 0:size]
    for c in range(classes):
        (root / f"n{c:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        img = np.stack([(xx * (i % 7 + 1)) % 256, (yy * (i % 5 + 1)) % 256, np.full_like(xx, i % 256)], -1)
        Image.fromarray(img.astype(np.uint8)).save(root / f"n{i % classes:02d}" / f"{i:06d}.JPEG", quality=90)


@pytest.fixture
def prepared(tmp_path) -> Path:
    """A 3-class JPEG folder of 40 images prepared into 7-image shards."""
    _jpeg_classes(tmp_path / "raw" / "train", 40, 24)
    spec = {"kind": "imagenet64", "path": str(tmp_path / "raw"), "resolution": 16, "n_test": 5, "shard_items": 7}
    prepare_dataset("imagenet64", spec, tmp_path / "d" / "manifest.json", progress=False)
    return tmp_path / "d"


def test_shards_roundtrip_in_order_with_labels_and_per_shard_sha256(prepared):
    man = load_manifest(prepared)
    assert man["layout"] == "JPEG classes" and man["n_train"] == 35 and man["n_test"] == 5
    assert [e["n"] for e in man["shards"]["train"]] == [7] * 5 and len(man["shards"]["test"]) == 1
    for e in man["shards"]["train"]:  # each shard is a plain .npy numpy reads on its own
        assert np.load(prepared / e["file"]).shape == (e["n"], 16, 16, 3)
    x = load_split(prepared, "train")
    assert len(x) == 35 and x.shape == (35, 16, 16, 3) and x.dtype == np.uint8
    full = np.asarray(x)
    idx = torch.tensor([34, 0, 7, 6, 20, 0])
    np.testing.assert_array_equal(x[idx], full[idx.numpy()])  # gathered across shards, in the order asked
    np.testing.assert_array_equal(x[-1], full[34])
    np.testing.assert_array_equal(x[3:9], full[3:9])
    y = load_labels(prepared, "train")
    assert y.dtype == np.int64 and len(y) == 35 and set(y.tolist()) == {0, 1, 2}
    b = to_model_space(x[idx])
    assert b.shape == (6, 3, 16, 16) and b.dtype == torch.float32 and b.min() >= -1 and b.max() <= 1


def test_unlabelled_and_corrupt_or_unreadable_data_give_one_line_errors(prepared, tmp_path):
    assert load_labels(prepared, "test") is not None
    shard = prepared / load_manifest(prepared)["shards"]["train"][2]["file"]
    raw = bytearray(shard.read_bytes())
    raw[-1] ^= 0xFF
    shard.write_bytes(bytes(raw))
    with pytest.raises(DatasetError, match="does not match its manifest sha256") as e:
        load_split(prepared, "train")
    assert "\n" not in str(e.value)
    shard.unlink()
    with pytest.raises(DatasetError, match="is missing"):
        load_split(prepared, "train", verify=False)
    (prepared / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="unreadable") as e:
        load_manifest(prepared)
    assert "re-run the prepare rule" in str(e.value)


def test_writer_refuses_mixed_item_shapes(tmp_path):
    w = ShardWriter(tmp_path, "train", (4, 4, 3), shard_items=3)
    w.add(np.zeros((5, 4, 4, 3), np.uint8))
    with pytest.raises(DatasetError, match="share one size"):
        w.add(np.zeros((1, 5, 4, 3), np.uint8))
    assert [e["n"] for e in w.close()] == [3, 2]


def test_batch_for_rank_slices_concatenate_to_the_global_batch():
    g = torch.arange(12) * 3
    parts = [batch_for_rank(g, r, 4) for r in range(4)]
    assert torch.equal(torch.cat(parts), g) and all(len(p) == 3 for p in parts)
    with pytest.raises(DatasetError, match="multiple of the number of GPUs"):
        batch_for_rank(torch.arange(10), 0, 4)


def test_loader_with_workers_and_ranks_reproduces_the_seeded_batches(prepared):
    x, y = load_split(prepared, "train"), load_labels(prepared, "train")
    def draw(step: int) -> torch.Tensor:  # the training loop's contract: indices from (seed, step)
        return torch.randint(0, len(x), (8,), generator=torch.Generator().manual_seed(1000 + step))

    want = [x[draw(k)] for k in range(3, 7)]
    got = [b.numpy() for b, _ in step_loader(x, draw, 3, 7, labels=y, workers=2)]
    assert len(got) == 4 and all(np.array_equal(a, b) for a, b in zip(want, got))
    ranks = [list(step_loader(x, draw, 3, 7, labels=y, rank=r, world=2)) for r in range(2)]
    for k in range(4):
        np.testing.assert_array_equal(np.concatenate([ranks[0][k][0], ranks[1][k][0]]), want[k])
        np.testing.assert_array_equal(np.concatenate([ranks[0][k][1], ranks[1][k][1]]), y[draw(3 + k).numpy()])


_RSS_SCRIPT = """
import sys, time
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith(("VmHWM", "VmRSS")):
            yield int(line.split()[1]) * 1024
import numpy, torch, PIL.Image, tqdm
from benchmark.prepare import prepare_dataset
from benchmark.data import load_split
from benchmark.data.shards import step_loader
# warm the code paths on a tiny folder first, so the baseline holds every import and pool
prepare_dataset("w", dict(kind="imagenet128", path=sys.argv[3], n_test=2, shard_items=4), sys.argv[4], progress=False)
base = max(hwm())
t0 = time.perf_counter()
if sys.argv[1] == "prepare":
    spec = dict(kind="imagenet128", path=sys.argv[2], n_test=50, shard_items=32, workers=2)
    prepare_dataset("big", spec, sys.argv[5], progress=False)
else:
    x = load_split(sys.argv[5].rsplit("/", 1)[0], "train", verify=False)
    n = 0
    draw = lambda k: torch.randint(0, len(x), (128,), generator=torch.Generator().manual_seed(k))
    for b, _ in step_loader(x, draw, 0, 60):
        n += int(b.shape[0])
    assert n == 60 * 128
print(base, max(hwm()), time.perf_counter() - t0)
"""


def _peak(mode: str, tmp_path: Path) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(_RSS_SCRIPT), mode, str(tmp_path / "big"),
                          str(tmp_path / "small"), str(tmp_path / "w" / "manifest.json"),
                          str(tmp_path / "p" / "manifest.json")],
                         capture_output=True, text=True, timeout=600, cwd=REPO,
                         env={"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    base, peak, _ = out.stdout.split()
    return int(base), int(peak)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for peak RSS")
def test_peak_memory_of_prepare_and_of_reading_is_bounded_independent_of_dataset_size(tmp_path):
    """3000 JPEGs at 128 px = 147 MB as uint8: preparing them and reading 60 random batches of 128
    must each add less than BOUND to the process's peak resident set (measured: see docs/datasets.md)."""
    bound = 64 << 20
    _jpeg_classes(tmp_path / "big", 3000, 128)
    _jpeg_classes(tmp_path / "small", 6, 128)
    dataset_bytes = 3000 * 128 * 128 * 3
    assert dataset_bytes > 2 * bound
    base, peak = _peak("prepare", tmp_path)
    assert load_manifest(tmp_path / "p")["n_train"] == 2950
    assert peak - base < bound, f"prepare added {(peak - base) >> 20} MB to the peak RSS"
    base, peak = _peak("read", tmp_path)
    assert peak - base < bound, f"reading added {(peak - base) >> 20} MB to the peak RSS"


def test_raw_fingerprint_changes_with_content_and_prepare_logs_the_layout(tmp_path, caplog):
    _jpeg_classes(tmp_path / "raw" / "train", 6, 24)
    a = raw_fingerprint(tmp_path / "raw")
    assert raw_fingerprint(tmp_path / "raw") == a
    f = next((tmp_path / "raw" / "train" / "n00").iterdir())
    f.write_bytes(f.read_bytes() + b"\0")
    assert raw_fingerprint(tmp_path / "raw") != a
    caplog.set_level("INFO", logger="fewstep")
    man = prepare_dataset("imagenet64", {"kind": "imagenet64", "path": "raw", "resolution": 8},
                          tmp_path / "d" / "manifest.json", data_root=tmp_path, progress=False)
    assert "detected layout 'JPEG classes'" in caplog.text
    assert man["raw_fingerprint"] == raw_fingerprint(tmp_path / "raw" / "train")


def _snakemake(tmp_path: Path, *args: str) -> str:
    bindir = Path(sys.executable).parent
    env = {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(tmp_path)}
    out = subprocess.run([str(bindir / "snakemake"), "--cores", "1", "-s", str(REPO / "Snakefile"),
                          "--directory", str(tmp_path), *args], capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout + out.stderr


def test_raw_input_follows_the_data_root_and_says_what_is_missing(tmp_path):
    from benchmark.prepare import raw_input

    spec = {"kind": "imagenet64", "path": "imgs", "resolution": 8}
    for root in ("a", "b"):
        _jpeg_classes(tmp_path / root / "imgs" / "train", 3, 16, classes=1)
    a, b = raw_input("i", spec, tmp_path / "a"), raw_input("i", spec, tmp_path / "b")
    assert a["path"] == str(tmp_path / "a" / "imgs" / "train") and a["layout"] == "JPEG classes"
    assert b["path"] != a["path"] and b["fingerprint"] != a["fingerprint"]
    gone = raw_input("i", spec, tmp_path / "c")
    assert gone["path"] is None and gone["fingerprint"].startswith("missing: ImageNet not found")
    assert raw_input("g", {"kind": "gmm"}, None)["layout"] == "generated"


@pytest.mark.slow
def test_prepare_reruns_when_raw_data_or_data_root_change(tmp_path):
    """The prepare rule's inputs are the raw data: a rewritten file or another data_root re-runs it."""
    import yaml

    for root in ("data", "data2"):
        _jpeg_classes(tmp_path / root / "imgs" / "train", 6, 24)
    suite = {"name": "dagtest", "datasets": {"img": {"kind": "imagenet64", "path": "imgs", "resolution": 8,
                                                     "n_test": 2, "extractors": []}},
             "experiments": [{"method": "edm", "dataset": "img", "variant": "t", "net": {"type": "unet"},
                              "train": {"images": 4, "batch": 2, "lr": 0.001}, "steps": [1]}]}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(suite))
    from benchmark.config import load_suite
    from benchmark.provenance import sha256_json

    target = f"results/data/img-{sha256_json(load_suite(tmp_path / 's.yaml').datasets['img'])[:8]}/manifest.json"
    cfg = ["--config", f"suite={tmp_path / 's.yaml'}", f"data_root={tmp_path / 'data'}"]
    _snakemake(tmp_path, target, *cfg)
    assert "Nothing to be done" in _snakemake(tmp_path, target, "-n", *cfg)
    f = next((tmp_path / "data" / "imgs" / "train" / "n01").iterdir())
    f.write_bytes(f.read_bytes() + b"\0")
    assert "prepare" in _snakemake(tmp_path, target, "-n", *cfg)
    other = ["--config", f"suite={tmp_path / 's.yaml'}", f"data_root={tmp_path / 'data2'}"]
    assert "prepare" in _snakemake(tmp_path, target, "-n", *other)
    log = json.loads((tmp_path / target).read_text())
    assert log["layout"] == "JPEG classes"


def test_per_batch_conversion_equals_converting_the_whole_split(prepared):
    """The training loop may convert per batch (`to_model_space(data[idx])`) instead of converting
    the split up front: same floats, so runs stay bit-identical across that change."""
    x = load_split(prepared, "train")
    idx = torch.randint(0, len(x), (16,), generator=torch.Generator().manual_seed(0))
    assert torch.equal(to_model_space(x[idx]), to_model_space(x)[idx])
    t = to_model_space(x)
    assert to_model_space(t[idx]) is not None and torch.equal(to_model_space(t[idx]), t[idx])
