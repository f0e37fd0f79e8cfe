"""The training loop behind ``convforge train``: progress, per-epoch accuracy, weights and curves."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from convforge.data import DataLoader, default_mnist_augmentation, mnist
from convforge.errors import ConvforgeError
from convforge.fileio import atomic_write
from convforge.frontend import optim
from convforge.frontend.compile import CompiledModel, TrainStep, compile_train
from convforge.frontend.nn import manual_seed
from convforge.models import get_model
from convforge.serialization import save


@dataclasses.dataclass
class TrainConfig:
    """What ``convforge train`` does; the defaults train LeNet-5 to >= 96 % on the bundled MNIST."""

    model: str = "lenet5"
    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "sgd"
    lr: float | None = None  # None: 0.05 for SGD, 1e-3 for Adam
    schedule: str = "cosine"  # "cosine" (per epoch, down to 5 % of lr) or "constant"
    momentum: float = 0.9
    weight_decay: float = 0.0
    backend: str | None = None
    augment: bool = False
    seed: int = 0
    out: str = "runs/{model}"
    limit: int | None = None  # train on the first `limit` images (smoke tests)
    data_path: str | None = None
    progress: bool = True


@dataclasses.dataclass
class EpochRecord:
    epoch: int
    loss: float
    train_accuracy: float
    val_accuracy: float
    seconds: float
    images_per_second: float


@dataclasses.dataclass
class TrainResult:
    history: list[EpochRecord]
    weights: Path | None
    curves: Path | None
    compile_seconds: float
    interrupted: bool = False


def make_optimizer(name: str, lr: float | None, momentum: float, weight_decay: float) -> optim.Optimizer:
    if name == "sgd":
        return optim.SGD(lr=0.05 if lr is None else lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return optim.Adam(lr=1e-3 if lr is None else lr, weight_decay=weight_decay)
    raise ConvforgeError(f"unknown optimizer {name!r}; expected sgd or adam")


def scheduled_lr(base: float, epoch: int, epochs: int, schedule: str) -> float:
    """The learning rate of ``epoch`` (1-based): constant, or cosine from ``base`` to 5 % of it."""
    if schedule == "constant" or epochs <= 1:
        return base
    if schedule != "cosine":
        raise ConvforgeError(f"unknown schedule {schedule!r}; expected cosine or constant")
    progress = (epoch - 1) / (epochs - 1)
    return base * (0.05 + 0.95 * 0.5 * (1 + np.cos(np.pi * progress)))


def accuracy(
    net: CompiledModel, x: np.ndarray, y: np.ndarray, batch_size: int = 500
) -> tuple[float, np.ndarray]:
    """Top-1 accuracy and the predicted labels."""
    preds = np.concatenate([net(x[i : i + batch_size]).argmax(axis=1) for i in range(0, len(x), batch_size)])
    return float((preds == y).mean()), preds


def train(config: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Train ``config.model`` on MNIST; Ctrl-C stops and keeps the last saved epoch's weights.

    Every file is written atomically (:func:`convforge.fileio.atomic_write`), so a Ctrl-C
    during a save leaves the previous epoch's complete ``weights.npz``; the log then says
    which epoch that is. A run that completed no epoch writes nothing.
    """
    manual_seed(config.seed)
    (x_train, y_train), (x_test, y_test) = mnist(config.data_path, seed=config.seed)
    if config.limit is not None:
        x_train, y_train = x_train[: config.limit], y_train[: config.limit]
    model, shape = get_model(config.model)
    if shape != tuple(x_train.shape[1:]):
        raise ConvforgeError(f"model {config.model} expects input {shape}, the data is {x_train.shape[1:]}")
    out = Path(config.out.format(model=config.model)).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    opt = make_optimizer(config.optimizer, config.lr, config.momentum, config.weight_decay)
    transform = default_mnist_augmentation() if config.augment else None
    loader = DataLoader(
        x_train, y_train, config.batch_size, shuffle=True, seed=config.seed, transform=transform
    )

    start = time.perf_counter()
    step: TrainStep = compile_train(
        model, (None, *shape), loss="cross_entropy", optimizer=opt, backend=config.backend
    )
    step.warmup(x_train[: config.batch_size], y_train[: config.batch_size])
    net = step.inference()
    accuracy(net, x_test[:1], y_test[:1])  # compiles the inference program
    compile_seconds = time.perf_counter() - start
    log(
        f"compiled {config.model} for {step.backend} in {compile_seconds:.1f} s "
        f"({len(x_train)} training images, {len(x_test)} validation images)"
    )

    history: list[EpochRecord] = []
    weights = out / "weights.npz"
    saved = 0  # the epoch whose weights this run wrote to `weights` (0: none)
    pending, before = 0, None  # the epoch being saved, and the file it replaces
    interrupted = False
    base_lr = step.lr
    try:
        for epoch in range(1, config.epochs + 1):
            step.set_lr(scheduled_lr(base_lr, epoch, config.epochs, config.schedule))
            record = _run_epoch(step, net, loader, epoch, config, (x_train, y_train), (x_test, y_test))
            history.append(record)
            pending, before = epoch, _file_id(weights)
            save(step, weights)  # atomic: the old complete file until the new one replaces it
            saved = epoch
            log(
                f"epoch {epoch:>2}/{config.epochs}  loss {record.loss:.4f}  "
                f"train acc {record.train_accuracy:6.2%}  val acc {record.val_accuracy:6.2%}  "
                f"{record.seconds:5.1f} s  ({record.images_per_second:,.0f} img/s)"
            )
    except KeyboardInterrupt:
        interrupted = True
        if pending > saved and _file_id(weights) != before:
            saved = pending  # the new file was renamed into place just before the interrupt
        log(_interrupted(len(history), saved, weights))
    curves, written = None, []
    if saved:
        written.append(f"weights: {weights}" + (f" (epoch {saved})" if saved < config.epochs else ""))
    if history:  # nothing is written (or overwritten) for a run that completed no epoch
        try:
            records = json.dumps([dataclasses.asdict(r) for r in history], indent=2)
            written.append(f"history: {atomic_write(out / 'history.json', records)}")
            curves = plot_curves(history, out / "curves.png")
            written.append(f"curves:  {curves}")
        except KeyboardInterrupt:  # a second Ctrl-C: each file is still old-or-new, never torn
            interrupted, curves = True, None
            log(
                "interrupted while writing the history and curves: "
                + ("kept only:" if written else "kept nothing")
            )
    for line in written:
        log(line)
    return TrainResult(history, weights if saved else None, curves, compile_seconds, interrupted)


def _file_id(path: Path) -> tuple[int, int, int] | None:
    """Which file ``path`` is now: an atomic save replaces it by another inode."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _interrupted(completed: int, saved: int, weights: Path) -> str:
    """What an interrupted run kept, and nothing more."""
    if saved and saved == completed:
        return f"interrupted: keeping the weights of epoch {saved}"
    if saved:
        return f"interrupted while saving epoch {completed}: keeping the weights of epoch {saved}"
    earlier = f"; the {weights} of an earlier run is unchanged" if weights.exists() else ""
    if completed:
        return f"interrupted while saving epoch {completed}: no weights saved by this run{earlier}"
    return f"interrupted before the first epoch finished: no weights saved{earlier}"


def _run_epoch(
    step: TrainStep,
    net: CompiledModel,
    loader: DataLoader,
    epoch: int,
    config: TrainConfig,
    train_set: tuple,
    test_set: tuple,
) -> EpochRecord:
    from tqdm import tqdm

    losses, seen = [], 0
    start = time.perf_counter()
    bar = tqdm(
        loader,
        total=len(loader),
        desc=f"epoch {epoch}/{config.epochs}",
        unit="batch",
        disable=not config.progress,
        leave=False,
        dynamic_ncols=True,
    )
    for xb, yb in bar:
        losses.append(step(xb, yb))
        seen += len(xb)
        if len(losses) % 10 == 0:
            elapsed = time.perf_counter() - start
            bar.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}", img_s=f"{seen / elapsed:,.0f}")
    bar.close()
    seconds = time.perf_counter() - start
    train_acc, _ = accuracy(net, *train_set)
    val_acc, _ = accuracy(net, *test_set)
    return EpochRecord(epoch, float(np.mean(losses)), train_acc, val_acc, seconds, seen / max(seconds, 1e-9))


def plot_curves(history: list[EpochRecord], path: Path) -> Path:
    """A PNG of the loss and the train / validation accuracy per epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r.epoch for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r.loss for r in history], marker="o")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="Loss")
    ax_acc.plot(epochs, [100 * r.train_accuracy for r in history], marker="o", label="train")
    ax_acc.plot(epochs, [100 * r.val_accuracy for r in history], marker="o", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return path


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: int = 10) -> np.ndarray:
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (y_true, y_pred), 1)
    return matrix
