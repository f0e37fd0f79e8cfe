"""ImageFolder, ArrayDataset and load_image on a tiny folder of images written with Pillow."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import convforge as cf
from convforge.errors import ConvforgeError


def _write(path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    _write(root / "dog" / "b.png", np.full((6, 4, 3), 255, dtype=np.uint8))
    _write(root / "dog" / "a.png", np.zeros((6, 4, 3), dtype=np.uint8))
    _write(root / "cat" / "sub" / "x.jpg", np.full((5, 5, 3), [255, 0, 0], dtype=np.uint8))
    (root / "cat" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_labels_and_arrays_as_torchvision(folder):
    ds = cf.data.ImageFolder(folder, size=(4, 3), channels=3)
    assert ds.classes == ["cat", "dog"] and ds.class_to_idx == {"cat": 0, "dog": 1}
    assert [p.name for p, _ in ds.samples] == ["x.jpg", "a.png", "b.png"]
    np.testing.assert_array_equal(ds.y, [0, 1, 1])
    assert ds.x.shape == (3, 3, 4, 3) and ds.x.dtype == np.float32 and len(ds) == 3
    np.testing.assert_allclose(ds.x[1], 0.0)
    np.testing.assert_allclose(ds.x[2], 1.0)
    red = ds.x[0].mean(axis=(1, 2))  # JPEG is lossy: close to pure red
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1
    x0, y0 = ds[0]
    assert x0.shape == (3, 4, 3) and y0 == 0


def test_load_image_normalises_grayscale_to_a_batch(tmp_path):
    path = tmp_path / "seven.png"
    _write(path, np.array([[0, 255], [51, 102]], dtype=np.uint8))
    x = cf.data.load_image(path, channels=1, mean=0.5, std=0.25)
    np.testing.assert_allclose(x, (np.array([[[[0, 1], [0.2, 0.4]]]]) - 0.5) / 0.25, rtol=1e-6)
    assert x.dtype == np.float32 and x.shape == (1, 1, 2, 2)
    rgb = cf.data.load_image(path, size=3, channels=3, mean=[0, 0, 0], std=[1, 1, 1])
    assert rgb.shape == (1, 3, 3, 3)
    np.testing.assert_array_equal(rgb[0, 0], rgb[0, 2])  # gray to RGB: equal channels


def test_datasets_feed_the_data_loader_and_its_transforms(folder):
    ds = cf.data.ImageFolder(folder, size=4, channels=1)
    loader = ds.loader(2, seed=3, transform=cf.data.HorizontalFlip(p=1.0))
    batches = list(loader)
    assert [len(xb) for xb, _ in batches] == [2, 1] and sorted(np.concatenate([y for _, y in batches])) == [
        0,
        1,
        1,
    ]
    arrays = cf.data.ArrayDataset(np.arange(12, dtype=np.float32).reshape(3, 1, 2, 2), np.array([0, 1, 2]))
    xb, yb = next(iter(cf.data.DataLoader(arrays.x, arrays.y, 3, shuffle=False)))
    np.testing.assert_array_equal(xb, arrays.x)
    with pytest.raises(ConvforgeError, match="same number of samples"):
        cf.data.ArrayDataset(np.zeros((3, 2)), np.zeros(2))


def test_a_corrupt_image_is_an_error_naming_the_file(folder):
    broken = folder / "dog" / "c.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(ConvforgeError, match="c.png"):
        cf.data.ImageFolder(folder, size=4)
    with pytest.raises(ConvforgeError, match="c.png"):
        cf.data.load_image(broken)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": 2}, "channels 1"),
        ({"size": 0}, "size"),
        ({"std": 0.0}, "std != 0"),
        ({"mean": [0.1, 0.2]}, "3 numbers"),
    ],
)
def test_bad_options_are_clear_errors(folder, kwargs, message):
    with pytest.raises(ConvforgeError, match=message):
        cf.data.load_image(folder / "dog" / "a.png", **kwargs)


def test_folders_without_classes_or_images_are_errors(tmp_path):
    with pytest.raises(ConvforgeError, match="not a folder"):
        cf.data.ImageFolder(tmp_path / "missing", size=4)
    with pytest.raises(ConvforgeError, match="no class subfolders"):
        cf.data.ImageFolder(tmp_path, size=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConvforgeError, match="no image files"):
        cf.data.ImageFolder(tmp_path, size=4)
