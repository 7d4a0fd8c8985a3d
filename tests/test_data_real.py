"""Real-format dataset loaders: tiny files are written in each exact on-disk format (CIFAR pickle
batches, ILSVRC class folders of JPEGs, downsampled-ImageNet npz, LSUN lmdb) and read back through
the production `prepare` functions."""

from __future__ import annotations

import pickle
import tarfile

import numpy as np
import pytest
from PIL import Image

from benchmark.data import cifar10, imagenet, lsun
from benchmark.data.transforms import center_crop_resize, holdout, resolution
from benchmark.errors import DatasetError


def _assert_one_line(err: pytest.ExceptionInfo, *needles: str) -> None:
    msg = str(err.value)
    assert "\n" not in msg
    for n in needles:
        assert n in msg, (n, msg)


# ---------------------------------------------------------------- CIFAR-10


@pytest.fixture
def cifar_batches(tmp_path):
    """20 images: 5 train batches of 3 and a test batch of 5, in the official pickle layout."""
    rng = np.random.default_rng(0)
    batches = {}
    for name in cifar10.TRAIN_BATCHES + [cifar10.TEST_BATCH]:
        n = 5 if name == cifar10.TEST_BATCH else 3
        batches[name] = {b"batch_label": name.encode(), b"labels": [int(x) for x in rng.integers(0, 10, n)],
                         b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"filenames": [f"{name}_{j}.png".encode() for j in range(n)]}
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name, b in batches.items():
        (d / name).write_bytes(pickle.dumps(b, protocol=2))
    tgz = tmp_path / "tarball" / "cifar-10-python.tar.gz"
    tgz.parent.mkdir()
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(d, arcname="cifar-10-batches-py")
    return batches, d, tgz


def _check_cifar(out: dict, batches: dict) -> None:
    def nhwc(b):  # the official layout: row-major [N, 3*32*32] = CHW per image
        return b[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)

    train = [batches[n] for n in cifar10.TRAIN_BATCHES]
    np.testing.assert_array_equal(out["train"], np.concatenate([nhwc(b) for b in train]))
    np.testing.assert_array_equal(out["train_labels"], np.concatenate([b[b"labels"] for b in train]))
    np.testing.assert_array_equal(out["test"], nhwc(batches[cifar10.TEST_BATCH]))
    np.testing.assert_array_equal(out["test_labels"], batches[cifar10.TEST_BATCH][b"labels"])
    assert out["train"].dtype == np.uint8 and out["train_labels"].dtype == np.int64
    assert out["train"].shape == (15, 32, 32, 3) and out["shape"] == [3, 32, 32] and out["kind"] == "image"


def test_cifar_tarball_dir_and_parent_dirs_roundtrip(cifar_batches, tmp_path):
    batches, d, tgz = cifar_batches
    for p in (tgz, tgz.parent, d, tmp_path):  # tarball, dir holding it, batches dir, dir holding that
        _check_cifar(cifar10.prepare({"path": str(p)}), batches)


def test_cifar_max_images_caps_each_split(cifar_batches):
    _, d, _ = cifar_batches
    out = cifar10.prepare({"path": str(d), "max_images": 4})
    assert len(out["train"]) == 4 and len(out["test"]) == 4 and len(out["train_labels"]) == 4


def test_cifar_missing_and_corrupt(tmp_path, cifar_batches):
    with pytest.raises(DatasetError) as e:
        cifar10.prepare({"path": str(tmp_path / "nope")})
    _assert_one_line(e, "CIFAR-10 not found", "cifar-10-python.tar.gz", "cs.toronto.edu")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError) as e:
        cifar10.prepare({"path": str(empty)})
    _assert_one_line(e, str(empty), "cifar-10-batches-py")
    _, d, _ = cifar_batches
    (d / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetError) as e:
        cifar10.prepare({"path": str(d)})
    _assert_one_line(e, "data_batch_3", "re-download")


def test_cifar_refuses_pickles_that_run_code(cifar_batches):
    _, d, _ = cifar_batches

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (d / "test_batch").write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(DatasetError) as e:
        cifar10.prepare({"path": str(d)})
    _assert_one_line(e, "not allowed")


# ---------------------------------------------------------------- transforms


def test_center_crop_resize_is_adm_center_crop_arr():
    # 256x128 (WxH) -> res 32: box-halved twice to 64x32, no bicubic change, crop x 16..48
    arr = np.zeros((128, 256, 3), np.uint8)
    arr[:, :, 0] = np.arange(256)[None, :] // 4 * 4  # constant over each 4x4 block -> exact halving
    arr[:, :, 1] = np.arange(128)[:, None] // 4 * 4
    out = center_crop_resize(Image.fromarray(arr), 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[0, :, 0], (np.arange(16, 48) * 4))
    np.testing.assert_array_equal(out[:, 0, 1], (np.arange(32) * 4))
    # upscaling a small non-square grayscale image: short side -> res, RGB out
    small = center_crop_resize(Image.new("L", (10, 20), 7), 16)
    assert small.shape == (16, 16, 3) and (small == 7).all()


def test_resolution_and_holdout():
    assert resolution({"name": "imagenet128"}, 64) == 128
    assert resolution({"name": "imagenet128", "resolution": 32}, 64) == 32
    assert resolution({}, 64) == 64
    assert resolution({"name": "small_in", "dataset_kind": "imagenet256"}, 64) == 256
    tr, te = holdout(100, {"seed": 1})
    assert len(te) == 2 and len(tr) == 98 and not set(tr) & set(te)
    assert len(holdout(1000, {})[1]) == 20 and len(holdout(5, {})[1]) == 2
    np.testing.assert_array_equal(te, holdout(100, {"seed": 1})[1])
    assert holdout(1, {})[1].size == 0


# ---------------------------------------------------------------- ImageNet

COLORS = {"n02": (255, 0, 0), "n01": (0, 0, 255), "n03": (0, 200, 0)}  # created out of sorted order


def _jpeg_tree(root, per_class=(2, 3, 1)):
    for (cls, color), k in zip(COLORS.items(), per_class):
        (root / cls).mkdir(parents=True)
        for j in range(k):
            Image.new("RGB", (80 + 10 * j, 60), color).save(root / cls / f"{cls}_{j}.JPEG", quality=95)


def test_imagenet_jpeg_folders_labels_and_shape(tmp_path):
    _jpeg_tree(tmp_path / "train")
    out = imagenet.prepare({"path": str(tmp_path), "name": "imagenet32", "seed": 0})  # folder holding train/
    imgs = np.concatenate([out["train"], out["test"]])
    labels = np.concatenate([out["train_labels"], out["test_labels"]])
    assert imgs.shape == (6, 32, 32, 3) and out["shape"] == [3, 32, 32] and len(out["test"]) == 2
    assert labels.dtype == np.int64
    sorted_colors = [COLORS[c] for c in sorted(COLORS)]  # n01 -> 0, n02 -> 1, n03 -> 2
    for img, lab in zip(imgs, labels):
        assert np.abs(img.reshape(-1, 3).mean(0) - sorted_colors[lab]).max() < 8
    assert np.bincount(labels).tolist() == [3, 2, 1]


def test_imagenet_center_crop_keeps_center_of_wide_image(tmp_path):
    img = np.zeros((64, 160, 3), np.uint8)
    img[..., 0] = 255  # red everywhere ...
    img[:, 40:120] = (0, 255, 0)  # ... except a green band holding the centre (crop covers x 48..112)
    (tmp_path / "cls").mkdir()
    Image.fromarray(img).save(tmp_path / "cls" / "a.jpg", quality=95)
    Image.fromarray(img).save(tmp_path / "cls" / "b.jpg", quality=95)
    out = imagenet.prepare({"path": str(tmp_path), "resolution": 32, "n_test": 0})
    crop = out["train"][0].astype(int)
    assert crop.shape == (32, 32, 3)
    assert (crop[..., 1] > 200).all() and (crop[..., 0] < 60).all()


def test_imagenet_max_images_is_seeded_subset(tmp_path):
    _jpeg_tree(tmp_path)
    a = imagenet.prepare({"path": str(tmp_path), "resolution": 16, "max_images": 4, "seed": 3})
    b = imagenet.prepare({"path": str(tmp_path), "resolution": 16, "max_images": 4, "seed": 3})
    assert len(a["train"]) + len(a["test"]) == 4
    np.testing.assert_array_equal(a["train_labels"], b["train_labels"])


def _npz_batch(path, rng, n, res, first_label=1):
    data = rng.integers(0, 256, (n, 3 * res * res), dtype=np.uint8)
    labels = rng.integers(first_label, first_label + 1000, n)
    np.savez(path, data=data, labels=list(labels), mean=data.mean(0))
    return data, labels


def test_imagenet_downsampled_npz_batches(tmp_path):
    rng = np.random.default_rng(0)
    res = 8
    made = {i: _npz_batch(tmp_path / f"train_data_batch_{i}.npz", rng, 4, res) for i in (1, 2, 10)}
    out = imagenet.prepare({"path": str(tmp_path), "name": "imagenet64", "resolution": res, "n_test": 0})
    order = [1, 2, 10]  # natural order, not lexicographic (1, 10, 2)
    want = np.concatenate([made[i][0] for i in order]).reshape(-1, 3, res, res).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(out["train"], want)
    np.testing.assert_array_equal(out["train_labels"], np.concatenate([made[i][1] for i in order]) - 1)
    assert out["shape"] == [3, res, res] and len(out["test"]) == 0
    # one file, seeded hold-out, max_images cap across batches
    one = imagenet.prepare({"path": str(tmp_path / "train_data_batch_1.npz"), "resolution": res})
    assert len(one["train"]) == 2 and len(one["test"]) == 2
    capped = imagenet.prepare({"path": str(tmp_path), "resolution": res, "max_images": 6, "n_test": 0})
    np.testing.assert_array_equal(capped["train"], want[:6])
    with pytest.raises(DatasetError) as e:  # the name says 64, the files are 8x8
        imagenet.prepare({"path": str(tmp_path), "name": "imagenet64"})
    _assert_one_line(e, "8x8", "[N, 12288]")


def test_imagenet_missing_empty_and_imageless(tmp_path):
    with pytest.raises(DatasetError) as e:
        imagenet.prepare({"path": str(tmp_path / "nope"), "name": "imagenet64"})
    _assert_one_line(e, "does not exist", "train/", ".npz")
    with pytest.raises(DatasetError) as e:  # the generic name also looks at the downsampled naming
        imagenet.prepare({"path": str(tmp_path / "imagenet"), "name": "imagenet64"})
    _assert_one_line(e, "does not exist", str(tmp_path / "imagenet64"))
    with pytest.raises(DatasetError) as e:
        imagenet.prepare({"path": str(tmp_path), "name": "imagenet64"})
    _assert_one_line(e, "no class folders", "train/")
    (tmp_path / "train" / "n01").mkdir(parents=True)
    (tmp_path / "train" / "n01" / "readme.txt").write_text("x")
    with pytest.raises(DatasetError) as e:
        imagenet.prepare({"path": str(tmp_path), "name": "imagenet64"})
    _assert_one_line(e, "no images", "ILSVRC2012")
    (tmp_path / "train" / "n01" / "bad.JPEG").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError) as e:
        imagenet.prepare({"path": str(tmp_path), "name": "imagenet64"})
    _assert_one_line(e, "bad.JPEG", "remove or replace")


# ---------------------------------------------------------------- LSUN


def _lmdb(db, n):
    import io

    import lmdb

    env = lmdb.open(str(db), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for i in range(n):
            buf = io.BytesIO()
            Image.new("RGB", (300 + i, 200), (i * 20, 50, 100)).save(buf, format="PNG")
            txn.put(f"{i:040x}".encode(), buf.getvalue())
    env.close()


def test_lsun_lmdb_count_shape_and_cap(tmp_path):
    _lmdb(tmp_path / "church_outdoor_train_lmdb", 10)
    out = lsun.prepare({"path": str(tmp_path), "name": "lsun256", "category": "church_outdoor"})
    assert out["train"].shape[1:] == (256, 256, 3) and out["train"].dtype == np.uint8
    assert len(out["train"]) + len(out["test"]) == 10 and len(out["test"]) == 2
    assert out["shape"] == [3, 256, 256] and "train_labels" not in out
    capped = lsun.prepare({"path": str(tmp_path / "church_outdoor_train_lmdb"), "resolution": 16,
                           "max_images": 4, "n_test": 0})
    assert capped["train"].shape == (4, 16, 16, 3)
    np.testing.assert_array_equal(capped["train"][:, 0, 0], [[i * 20, 50, 100] for i in range(4)])


def test_lsun_missing_empty_and_corrupt(tmp_path):
    with pytest.raises(DatasetError) as e:
        lsun.prepare({"path": str(tmp_path / "nope"), "name": "lsun256"})
    _assert_one_line(e, "not a directory", "bedroom_train_lmdb/", "data.mdb")
    with pytest.raises(DatasetError) as e:
        lsun.prepare({"path": str(tmp_path), "category": "tower"})
    _assert_one_line(e, "tower_train_lmdb/data.mdb", "fyu/lsun")
    _lmdb(tmp_path / "tower_train_lmdb", 0)
    with pytest.raises(DatasetError) as e:
        lsun.prepare({"path": str(tmp_path), "category": "tower"})
    _assert_one_line(e, "no entries", "tower_train_lmdb/")
    bad = tmp_path / "bedroom_train_lmdb"
    bad.mkdir()
    (bad / "data.mdb").write_bytes(b"\x00garbage" * 2048)
    with pytest.raises(DatasetError) as e:
        lsun.prepare({"path": str(tmp_path), "category": "bedroom"})
    _assert_one_line(e, "bedroom_train_lmdb", "replace", "intact copy", "fyu/lsun")


# ---------------------------------------------------------------- layouts, values, doctor


def test_cifar_non_uint8_values_are_refused_not_wrapped(cifar_batches):
    _, d, _ = cifar_batches
    b = pickle.loads((d / "test_batch").read_bytes())
    b[b"data"] = b[b"data"].astype(np.int64) + 200  # values up to 455: would wrap mod 256
    (d / "test_batch").write_bytes(pickle.dumps(b, protocol=2))
    with pytest.raises(DatasetError) as e:
        cifar10.prepare({"path": str(d)})
    _assert_one_line(e, "test_batch", "int64", "not uint8 0..255")
    b[b"data"] = b[b"data"] - 200  # int64 but within 0..255: the values are kept as they are
    (d / "test_batch").write_bytes(pickle.dumps(b, protocol=2))
    out = cifar10.prepare({"path": str(d)})
    assert out["test"].dtype == np.uint8 and out["test"].reshape(5, -1).max() <= 255


@pytest.mark.parametrize("where", ["imagenet", "imagenet/train", "imagenet64", "imagenet64/train"])
def test_imagenet_npz_batches_are_found_where_the_readme_says(tmp_path, where):
    rng = np.random.default_rng(0)
    (tmp_path / where).mkdir(parents=True)
    (tmp_path / "imagenet").mkdir(exist_ok=True)
    _npz_batch(tmp_path / where / "train_data_batch_1.npz", rng, 6, 64)
    src = imagenet.source({"path": str(tmp_path / "imagenet"), "name": "imagenet64", "n_test": 2})
    assert src.layout == "npz batches" and src.where == str(tmp_path / where) and src.total == 6
    out = imagenet.prepare({"path": str(tmp_path / "imagenet"), "name": "imagenet64", "n_test": 2})
    assert len(out["train"]) == 4 and len(out["test"]) == 2


def test_imagenet_jpeg_classes_under_train_are_found(tmp_path):
    _jpeg_tree(tmp_path / "imagenet" / "train")
    src = imagenet.source({"path": str(tmp_path / "imagenet"), "resolution": 16})
    assert src.layout == "JPEG classes" and src.where == str(tmp_path / "imagenet" / "train")


def test_doctor_checks_content_through_the_loaders(tmp_path, cifar_batches):
    from benchmark.doctor import check_dataset

    _, d, tgz = cifar_batches
    ok, line = check_dataset("cifar10", {"kind": "cifar10", "path": str(tgz)}, tmp_path)
    assert ok and "tarball" in line
    trunc = tmp_path / "trunc" / "cifar-10-python.tar.gz"
    trunc.parent.mkdir()
    trunc.write_bytes(tgz.read_bytes()[: tgz.stat().st_size // 2])
    ok, line = check_dataset("cifar10", {"kind": "cifar10", "path": str(trunc)}, tmp_path)
    assert not ok and "\n" not in line and "not a readable tar.gz" in line
    (tmp_path / "imagenet").mkdir()  # empty folder
    ok, line = check_dataset("imagenet64", {"kind": "imagenet64", "path": "imagenet"}, tmp_path)
    assert not ok and "no class folders or .npz batches" in line
    (tmp_path / "lsun").mkdir()
    _lmdb(tmp_path / "lsun" / "bedroom_train_lmdb", 0)  # empty lmdb
    ok, line = check_dataset("lsun256", {"kind": "lsun256", "path": "lsun"}, tmp_path)
    assert not ok and "no entries" in line
    (tmp_path / "lsun2").mkdir()
    _lmdb(tmp_path / "lsun2" / "bedroom_train_lmdb", 3)
    ok, line = check_dataset("lsun256", {"kind": "lsun256", "path": "lsun2"}, tmp_path)
    assert ok and "lmdb" in line and "3 images" in line
    bad = tmp_path / "imagenet2" / "train" / "n01"
    bad.mkdir(parents=True)
    Image.new("RGB", (40, 40)).save(bad / "a.JPEG")
    (bad / "z.JPEG").write_bytes(b"truncated")  # the last item is unreadable
    ok, line = check_dataset("imagenet64", {"kind": "imagenet64", "path": "imagenet2"}, tmp_path)
    assert not ok and "z.JPEG" in line


def test_imagenet_train_tarball_nested_or_flat_equals_the_extracted_folders(tmp_path):
    """ILSVRC2012_img_train.tar (one tar per class) and a flat tar of <wnid>/*.JPEG prepare the
    same images, order and labels as the extracted class folders; a corrupt member is named."""
    _jpeg_tree(tmp_path / "folders" / "train")
    want = imagenet.prepare({"path": str(tmp_path / "folders"), "resolution": 16, "seed": 1})
    (tmp_path / "nested").mkdir()
    for cls in sorted(COLORS):
        with tarfile.open(tmp_path / f"{cls}.tar", "w") as t:
            for f in sorted((tmp_path / "folders" / "train" / cls).iterdir()):
                t.add(f, arcname=f.name)
    with tarfile.open(tmp_path / "nested" / imagenet.TRAIN_TAR, "w") as t:
        for cls in sorted(COLORS, reverse=True):  # archive order must not matter
            t.add(tmp_path / f"{cls}.tar", arcname=f"{cls}.tar")
    flat = tmp_path / "flat.tar"
    with tarfile.open(flat, "w") as t:
        t.add(tmp_path / "folders" / "train", arcname="train")
    for p in (tmp_path / "nested", flat):
        src = imagenet.source({"path": str(p), "resolution": 16, "seed": 1})
        assert src.layout == "JPEG tar"
        got = imagenet.prepare({"path": str(p), "resolution": 16, "seed": 1})
        for k in ("train", "test", "train_labels", "test_labels"):
            np.testing.assert_array_equal(got[k], want[k])
    bad = tmp_path / "bad.tar"
    with tarfile.open(bad, "w") as t:
        t.add(tmp_path / "folders" / "train", arcname="train")
        (tmp_path / "z.JPEG").write_bytes(b"not a jpeg")
        t.add(tmp_path / "z.JPEG", arcname="train/n03/z.JPEG")
    with pytest.raises(DatasetError) as e:
        imagenet.prepare({"path": str(bad), "resolution": 16})
    _assert_one_line(e, "train/n03/z.JPEG", "ILSVRC2012_img_train.tar")
