"""MNIST loading: the bundled subset, and IDX files read, written and rejected."""

from __future__ import annotations

import gzip
import hashlib
import importlib.resources
import struct

import numpy as np
import pytest

from convforge.data import mnist, read_idx, write_idx
from convforge.errors import AttributeValueError, DataError

# SHA-256 of images.tobytes() + labels.tobytes() of the bundled file, as printed by
# tools/make_mnist_subset.py.
BUNDLED_ARRAYS_SHA256 = "809ec085d551285cf9efad12c42a6aead98c62f96eb9936cc5b778870773e50d"


def _bundled_raw() -> tuple[np.ndarray, np.ndarray]:
    resource = importlib.resources.files("convforge.data").joinpath("mnist_5k.npz")
    with importlib.resources.as_file(resource) as file, np.load(file, allow_pickle=False) as archive:
        return archive["images"], archive["labels"]


def test_bundled_file_checksum_and_balance():
    images, labels = _bundled_raw()
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (5000,) and labels.dtype == np.uint8
    digest = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    assert digest == BUNDLED_ARRAYS_SHA256
    assert np.bincount(labels, minlength=10).tolist() == [500] * 10


def test_bundled_split_shapes_dtypes_ranges():
    (x_train, y_train), (x_test, y_test) = mnist()
    assert x_train.shape == (4000, 1, 28, 28) and x_test.shape == (1000, 1, 28, 28)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32
    assert y_train.dtype == np.int64 and y_test.dtype == np.int64
    assert y_train.shape == (4000,) and y_test.shape == (1000,)
    for x in (x_train, x_test):
        assert x.min() == 0.0 and x.max() == 1.0
        assert x.flags.c_contiguous
    assert np.bincount(y_train).tolist() == [400] * 10
    assert np.bincount(y_test).tolist() == [100] * 10
    # The two parts are disjoint and together are the whole subset.
    images, _ = _bundled_raw()
    train_keys = {row.tobytes() for row in np.rint(x_train * 255).astype(np.uint8)}
    test_keys = {row.tobytes() for row in np.rint(x_test * 255).astype(np.uint8)}
    all_keys = {img[None].tobytes() for img in images}
    assert train_keys | test_keys <= all_keys and not train_keys & test_keys


def test_bundled_split_deterministic_and_seeded():
    (a, ya), (b, yb) = mnist()
    (c, yc), (d, yd) = mnist(seed=0)
    assert np.array_equal(a, c) and np.array_equal(ya, yc)
    assert np.array_equal(b, d) and np.array_equal(yb, yd)
    (e, ye), _ = mnist(seed=1)
    assert not np.array_equal(ya, ye)
    # Results are fresh arrays: writing into one does not change the next call.
    a[:] = 0.5
    (f, _), _ = mnist()
    assert np.array_equal(f, c) and not np.array_equal(f, a)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bundled_rejects_bad_seed(seed):
    with pytest.raises(AttributeValueError, match="seed"):
        mnist(seed=seed)


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64, np.dtype(">i4")]
)
def test_idx_round_trip(tmp_path, suffix, dtype):
    rng = np.random.default_rng(0)
    array = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.shape == array.shape
    assert back.dtype == np.dtype(dtype).newbyteorder("=")
    assert np.array_equal(back, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".gz")


def test_idx_layout_matches_spec(tmp_path):
    path = tmp_path / "labels"
    write_idx(path, np.array([7, 2, 1], dtype=np.uint8))
    assert path.read_bytes() == b"\x00\x00\x08\x01" + struct.pack(">I", 3) + bytes([7, 2, 1])
    path = tmp_path / "ints"
    write_idx(path, np.array([[1, -2]], dtype=np.int32))
    assert path.read_bytes() == b"\x00\x00\x0c\x02" + struct.pack(">II", 1, 2) + struct.pack(">ii", 1, -2)


def test_write_idx_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(DataError, match="int64"):
        write_idx(tmp_path / "x", np.zeros(3, dtype=np.int64))


def test_read_idx_rejects_bad_magic(tmp_path):
    path = tmp_path / "bad-magic"
    path.write_bytes(b"\x01\x00\x08\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataError, match="bad-magic.*magic.*00 00.*found 01 00 08 01"):
        read_idx(path)


def test_read_idx_rejects_unknown_dtype_code(tmp_path):
    path = tmp_path / "bad-code"
    path.write_bytes(b"\x00\x00\x07\x01" + struct.pack(">I", 1) + b"\x00")
    with pytest.raises(DataError, match="bad-code.*0x07"):
        read_idx(path)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_rejects_truncated_data(tmp_path, suffix):
    path = tmp_path / f"short{suffix}"
    payload = b"\x00\x00\x08\x03" + struct.pack(">III", 2, 28, 28) + bytes(100)
    path.write_bytes(gzip.compress(payload) if suffix else payload)
    with pytest.raises(DataError, match=f"short{suffix}.*truncated.*1568.*found 100"):
        read_idx(path)


def test_read_idx_rejects_truncated_header_and_gzip(tmp_path):
    path = tmp_path / "short-header"
    path.write_bytes(b"\x00\x00\x08\x03" + struct.pack(">I", 2))
    with pytest.raises(DataError, match="short-header.*truncated header"):
        read_idx(path)
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", 500) + bytes(500))[:30])
    with pytest.raises(DataError, match="cut.gz.*gzip"):
        read_idx(path)


def test_read_idx_rejects_trailing_bytes(tmp_path):
    path = tmp_path / "long"
    path.write_bytes(b"\x00\x00\x08\x01" + struct.pack(">I", 2) + bytes(3))
    with pytest.raises(DataError, match="long.*trailing.*2 data bytes, found 3"):
        read_idx(path)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="nope.*not found"):
        read_idx(tmp_path / "nope")


def _write_mnist_dir(directory, n_train=6, n_test=4, gz=False, label_count=None):
    rng = np.random.default_rng(1)
    ext = ".gz" if gz else ""
    parts = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=label_count or n, dtype=np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{ext}", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{ext}", labels)
        parts[prefix] = (images, labels)
    return parts


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_from_idx_directory(tmp_path, gz):
    parts = _write_mnist_dir(tmp_path, gz=gz)
    (x_train, y_train), (x_test, y_test) = mnist(path=tmp_path)
    assert x_train.shape == (6, 1, 28, 28) and x_test.shape == (4, 1, 28, 28)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    np.testing.assert_allclose(x_train[:, 0] * 255, parts["train"][0], atol=1e-4)
    np.testing.assert_array_equal(y_test, parts["t10k"][1])
    assert 0.0 <= x_test.min() and x_test.max() <= 1.0


def test_mnist_path_expands_user(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "mnist").mkdir()
    _write_mnist_dir(tmp_path / "mnist")
    (x_train, _), _ = mnist(path="~/mnist")
    assert len(x_train) == 6


def test_mnist_count_mismatch(tmp_path):
    _write_mnist_dir(tmp_path, label_count=5)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.*expected 6 labels.*found 5"):
        mnist(path=tmp_path)


def test_mnist_missing_file(tmp_path):
    _write_mnist_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte\.gz"):
        mnist(path=tmp_path)


def test_mnist_missing_directory(tmp_path):
    with pytest.raises(DataError, match="absent.*directory"):
        mnist(path=tmp_path / "absent")


def test_mnist_wrong_dtype_in_file(tmp_path):
    _write_mnist_dir(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((6, 28, 28), dtype=np.float32))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*unsigned-byte.*float32"):
        mnist(path=tmp_path)


def test_mnist_truncated_file(tmp_path):
    _write_mnist_dir(tmp_path)
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte.*truncated"):
        mnist(path=tmp_path)
