from __future__ import annotations

import gzip
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from skipgan_edge.data import fmnist
from skipgan_edge.data.datasets import load_data, load_folder
from skipgan_edge.data.images import prepare, to_uint8
from skipgan_edge.data.synthetic import SyntheticSpec, write_synthetic
from skipgan_edge.errors import DataError


def _folder(root: Path, n: int = 12, dtype: type = np.uint8, gray: bool = False) -> Path:
    rng = np.random.default_rng(0)
    hi = 255 if dtype == np.uint8 else 65535
    for sub, count in (("train/good", n), ("test/good", 4), ("test/dent", 3)):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            shape = (40, 50) if gray else (40, 50, 3)
            cv2.imwrite(str(root / sub / f"{i}.png"), rng.integers(0, hi, shape).astype(dtype))
    (root / "ground_truth" / "dent").mkdir(parents=True)
    m = np.zeros((40, 50), np.uint8)
    m[10:20, 10:20] = 255
    cv2.imwrite(str(root / "ground_truth" / "dent" / "0_mask.png"), m)
    return root


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("gray", [True, False])
@pytest.mark.parametrize("channels", [1, 3])
def test_folder_8_16_bit_gray_colour(tmp_path: Path, dtype: type, gray: bool, channels: int) -> None:
    ds = load_folder(_folder(tmp_path, dtype=dtype, gray=gray), isize=32, channels=channels, val_fraction=0.25)
    assert ds.train.images.dtype == np.uint8
    assert ds.train.images.shape[1:] == (32, 32, channels)
    assert len(ds.train) + len(ds.val) == 12 and len(ds.val) == 3
    assert ds.test is not None and list(ds.test.labels) == [1, 1, 1, 0, 0, 0, 0]
    assert ds.test.masks is not None and ds.test.masks[0].any() and not ds.test.masks[1].any()
    if dtype == np.uint16:  # 16 bit scaled by a fixed /257, not stretched per image
        assert ds.train.images.max() > 200


def test_16_bit_fixed_scaling() -> None:
    img = np.full((4, 4), 257 * 10, np.uint16)
    assert (to_uint8(img) == 10).all()
    assert prepare(img, 32, 3).shape == (32, 32, 3)


def test_corrupt_files_skipped_and_listed_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _folder(tmp_path)
    (root / "train/good/broken.png").write_bytes(b"not a png at all")
    (root / "train/good/empty.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        ds = load_folder(root, 32, 3)
    assert ds.skipped == 2 and len(ds.train) + len(ds.val) == 12
    warnings = [r for r in caplog.records if "unreadable" in r.getMessage()]
    assert len(warnings) == 1 and "broken.png" in warnings[0].getMessage() and "2 unreadable" in warnings[0].getMessage()


def test_empty_and_missing_folders(tmp_path: Path) -> None:
    (tmp_path / "train" / "good").mkdir(parents=True)
    (tmp_path / "train/good/x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="no readable image"):
        load_folder(tmp_path, 32, 3)
    with pytest.raises(DataError, match="neither train/good/ nor image files"):
        load_folder(tmp_path / "train", 32, 3)
    with pytest.raises(DataError, match="not found"):
        load_folder(tmp_path / "nope", 32, 3)


def test_synthetic_is_deterministic_and_has_masks(tmp_path: Path) -> None:
    spec = SyntheticSpec(n_train=8, n_val_good=4, n_val_defect=1, n_test_good=4, n_test_defect=2, seed=3)
    write_synthetic(tmp_path / "a", spec)
    write_synthetic(tmp_path / "b", spec)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    assert len(files) == 8 + 4 + 4 + 4 + 8 + 4 + 8  # train, val good/defect, test good/defect, masks
    for f in files:
        assert (tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes()
    ds = load_folder(tmp_path / "a", 32, 1)
    assert ds.val.has_anomalies and ds.test is not None and ds.test.masks is not None
    # every defect image's mask marks something, and the defect changed those pixels
    for kind in ("scratch", "spot", "crack", "hole"):
        m = cv2.imread(str(tmp_path / "a/ground_truth" / kind / "0000_mask.png"), 0)
        assert (m > 0).sum() > 10


def _write_idx(path: Path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_fmnist_leave_one_out_protocol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    tr_y = np.repeat(np.arange(10), 6)
    te_y = np.repeat(np.arange(10), 2)
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", rng.integers(0, 255, (60, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", tr_y)
    _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", rng.integers(0, 255, (20, 28, 28)))
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", te_y)
    monkeypatch.setenv("SKIPGAN_FMNIST", str(tmp_path))
    d = fmnist.leave_one_out(3)
    assert len(d["train"]) == 54  # nine classes' training images
    assert len(d["test"]) == 20 + 6  # every test image plus the anomalous class's training images
    assert d["test_labels"].sum() == 2 + 6
    ds = load_data("fmnist:3", 32, 1)
    assert ds.train.images.shape[1:] == (32, 32, 1) and ds.test is not None and ds.test.has_anomalies
    with pytest.raises(DataError, match="0-9"):
        load_data("fmnist:12", 32, 1)
    monkeypatch.setenv("SKIPGAN_FMNIST", str(tmp_path / "missing"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        fmnist.load("train")


@pytest.mark.skipif(not fmnist.DEFAULT_ROOT.exists(), reason="dataset-fashion-mnist not installed (make test installs it)")
def test_real_fashion_mnist() -> None:
    x, y = fmnist.load("t10k", fmnist.DEFAULT_ROOT)
    assert x.shape == (10000, 28, 28) and sorted(set(y.tolist())) == list(range(10))
    d = fmnist.leave_one_out(0, fmnist.DEFAULT_ROOT)
    assert len(d["train"]) == 54000 and len(d["test"]) == 16000 and d["test_labels"].sum() == 7000
