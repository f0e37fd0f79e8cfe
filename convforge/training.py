"""The training loop behind ``convforge train`` and ``cf.fit``: progress, per-epoch accuracy,
weights, curves and resuming."""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from convforge import distributed, metrics
from convforge.data import ArrayDataset, DataLoader, default_mnist_augmentation, mnist
from convforge.errors import ConvforgeError
from convforge.fileio import atomic_write
from convforge.frontend import optim
from convforge.frontend.compile import CompiledModel, TrainStep, compile_train
from convforge.frontend.nn import Module, manual_seed
from convforge.serialization import save
from convforge.usermodel import resolve_model


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
    #: a run folder of an earlier ``train``: continue from its weights, optimizer state and
    #: history (``epochs`` stays the total: epochs already in its history are not rerun)
    resume: str | None = None


@dataclasses.dataclass
class EpochRecord:
    """One epoch: mean training loss; accuracies (None without class labels or validation data)."""

    epoch: int
    loss: float
    train_accuracy: float | None
    val_accuracy: float | None
    seconds: float
    images_per_second: float


@dataclasses.dataclass
class TrainResult:
    history: list[EpochRecord]
    weights: Path | None
    curves: Path | None
    compile_seconds: float
    interrupted: bool = False
    step: TrainStep | None = None  # the trained step: ``result.step.inference()`` predicts


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


def predict(net: CompiledModel, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """The predicted labels (argmax of the outputs), ``batch_size`` images at a time."""
    return np.concatenate([net(x[i : i + batch_size]).argmax(axis=1) for i in range(0, len(x), batch_size)])


def accuracy(
    net: CompiledModel, x: np.ndarray, y: np.ndarray, batch_size: int = 500
) -> tuple[float, np.ndarray]:
    """Top-1 accuracy and the predicted labels."""
    preds = predict(net, x, batch_size)
    return metrics.accuracy(preds, y), preds


class EpochSchedule:
    """``convforge train``'s ``--schedule`` as a scheduler: ``step()`` after each epoch sets the
    rate of the next, constant or cosine from the base rate down to 5 % of it over ``epochs``."""

    def __init__(self, step: TrainStep, epochs: int, schedule: str):
        scheduled_lr(1.0, 1, 2, schedule)  # an unknown schedule is refused now, not after epoch 1
        self.train_step, self.epochs, self.schedule = step, epochs, schedule
        self.base_lr = step.lr
        self.last_epoch = 1  # the epoch the current rate is for
        step.set_lr(scheduled_lr(self.base_lr, 1, epochs, schedule))

    def step(self) -> None:
        self.last_epoch += 1
        self.train_step.set_lr(scheduled_lr(self.base_lr, self.last_epoch, self.epochs, self.schedule))


def train(config: TrainConfig, log: Callable[[str], None] = print) -> TrainResult:
    """Train ``config.model`` on MNIST; Ctrl-C stops and keeps the last saved epoch's weights.

    The loop is :class:`Trainer`'s (as for :func:`fit`): every file is written atomically,
    so a Ctrl-C during a save leaves the previous epoch's complete ``weights.npz``; the log
    then says which epoch that is. A run that completed no epoch writes nothing.
    ``config.resume`` continues the run saved in that folder.
    """
    manual_seed(config.seed)
    (x_train, y_train), (x_test, y_test) = mnist(config.data_path, seed=config.seed)
    if config.limit is not None:
        x_train, y_train = x_train[: config.limit], y_train[: config.limit]
    model, shape = resolve_model(config.model)
    if shape != tuple(x_train.shape[1:]):
        raise ConvforgeError(f"model {config.model} expects input {shape}, the data is {x_train.shape[1:]}")
    opt = make_optimizer(config.optimizer, config.lr, config.momentum, config.weight_decay)
    transform = default_mnist_augmentation() if config.augment else None
    loader = DataLoader(
        x_train, y_train, config.batch_size, shuffle=True, seed=config.seed, transform=transform
    )
    # under mpiexec / srun with several ranks: data-parallel, rank 0 alone prints and writes
    parallel = distributed.MPI() if distributed.launched() else None
    step = compile_train(
        model,
        (None, *shape),
        loss="cross_entropy",
        optimizer=opt,
        backend=config.backend,
        distributed=parallel,
    )
    trainer = trainer_class(step)(
        step,
        loader,
        epochs=config.epochs,
        val_data=(x_test, y_test),
        scheduler=EpochSchedule(step, config.epochs, config.schedule),
        out=config.out.format(model=config.model),
        progress=config.progress,
        log=log,
        name=config.model,
    )
    return trainer.fit(resume=config.resume)


def fit(
    model_or_step: Module | TrainStep,
    train_data: DataLoader | ArrayDataset | tuple[np.ndarray, np.ndarray],
    *,
    epochs: int,
    val_data: DataLoader | ArrayDataset | tuple[np.ndarray, np.ndarray] | None = None,
    loss: str = "cross_entropy",
    optimizer: optim.Optimizer | None = None,
    scheduler: Any = None,
    batch_size: int = 64,
    seed: int = 0,
    transform: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = None,
    backend: str | None = None,
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> TrainResult:
    """Train a model (compiled here with ``loss``, ``optimizer``, ``backend``) or a compiled
    :class:`TrainStep` for ``epochs`` epochs, with ``convforge train``'s loop (:class:`Trainer`).

    ``train_data`` is a DataLoader, a dataset (``cf.data.ArrayDataset``, ``ImageFolder``) or
    ``(x, y)`` arrays (then ``batch_size``, ``seed`` and ``transform`` make its DataLoader);
    ``val_data`` the same, or None. Each epoch reports the mean training loss and, for integer
    labels, the training and validation accuracy; ``scheduler`` (an ``optim.lr_scheduler``)
    steps once per epoch. With ``out`` the weights (``cf.save``) are written after every
    epoch, ``history.json`` and ``curves.png`` at the end; ``resume`` continues the run saved
    in that folder (``epochs`` counts the epochs of the whole run).

    >>> opt = optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    >>> result = cf.fit(model, (x_train, y_train), epochs=5, val_data=(x_test, y_test), optimizer=opt,
    ...                 scheduler=optim.lr_scheduler.CosineAnnealingLR(opt, T_max=5), out="runs/mine")
    >>> net = result.step.inference()
    """
    loader = _as_loader(train_data, batch_size, seed, transform)
    if isinstance(model_or_step, TrainStep):
        if loss != "cross_entropy" or optimizer is not None or backend is not None:
            raise ConvforgeError(
                "fit: a compiled TrainStep has its loss, optimizer and backend; give them to "
                "compile_train, or give fit the model"
            )
        step = model_or_step
    else:
        shape = (None, *loader.x.shape[1:])
        step = compile_train(model_or_step, shape, loss=loss, optimizer=optimizer, backend=backend)
    trainer = trainer_class(step)(
        step,
        loader,
        epochs=epochs,
        val_data=None if val_data is None else _as_arrays(val_data),
        scheduler=scheduler,
        out=out,
        progress=progress,
        log=log,
    )
    return trainer.fit(resume=resume)


class Trainer:
    """The training loop shared by ``convforge train`` and :func:`fit`.

    ``fit()`` compiles (``step.warmup``), then per epoch: one pass over ``loader`` with a
    progress bar, accuracy on the training arrays and ``val_data`` (integer labels only),
    ``scheduler.step()`` (``step(loss)`` for a scheduler that takes a metric), and with
    ``out`` an atomic ``cf.save`` of the step to ``out/weights.npz``; at the end (or on
    Ctrl-C) ``history.json`` and ``curves.png``. Subclasses hook in by overriding
    :meth:`run_epoch`, :meth:`checkpoint` or :meth:`writes_files` (only one process of a
    data-parallel run should write).
    """

    def __init__(
        self,
        step: TrainStep,
        loader: DataLoader,
        *,
        epochs: int,
        val_data: tuple[np.ndarray, np.ndarray] | None = None,
        scheduler: Any = None,
        out: str | os.PathLike | None = None,
        progress: bool = True,
        log: Callable[[str], None] = print,
        name: str | None = None,
    ):
        if isinstance(epochs, bool) or not isinstance(epochs, int | np.integer) or epochs < 1:
            raise ConvforgeError(f"fit: expected epochs an int >= 1, given {epochs!r}")
        if not isinstance(loader, DataLoader):
            raise ConvforgeError(f"fit: expected a DataLoader, given {type(loader).__name__}")
        if scheduler is not None and not callable(getattr(scheduler, "step", None)):
            raise ConvforgeError(
                f"fit: expected scheduler to have a step() method (optim.lr_scheduler), given {scheduler!r}"
            )
        self.step, self.loader, self.epochs = step, loader, int(epochs)
        self.val_data, self.scheduler, self.progress, self.log = val_data, scheduler, progress, log
        self.name = name or step.name
        self.out = None if out is None else Path(out).expanduser()
        self.net: CompiledModel | None = None

    def writes_files(self) -> bool:
        """Whether this process writes the weights, history and curves."""
        return self.out is not None

    def run_epoch(self, epoch: int) -> EpochRecord:
        """One pass over the loader, then the accuracies."""
        train_set = (self.loader.x, self.loader.y) if _labels(self.loader.y) else None
        val_set = self.val_data if self.val_data is not None and _labels(self.val_data[1]) else None
        return _run_epoch(
            self.step, self.net, self.loader, epoch, self.epochs, self.progress, train_set, val_set
        )

    def checkpoint(self, path: Path) -> None:
        """Save the step (weights and optimizer state) after an epoch: atomic, old-or-new."""
        save(self.step, path)

    def fit(self, resume: str | os.PathLike | None = None) -> TrainResult:
        """Run the remaining epochs (all of them, or those after the run saved in ``resume``)."""
        if self.out is None and resume is not None:
            self.out = Path(resume).expanduser()  # a resumed run goes on writing where it was
        step, out = self.step, self.out
        writes = self.writes_files()
        if writes:
            out.mkdir(parents=True, exist_ok=True)
        history, done = self._resume(Path(resume).expanduser()) if resume is not None else ([], 0)

        start = time.perf_counter()
        step.warmup(self.loader.x[: self.loader.batch_size], self.loader.y[: self.loader.batch_size])
        self.net = step.inference()
        self.net(self.loader.x[:1])  # compiles the inference program
        compile_seconds = time.perf_counter() - start
        n_val = 0 if self.val_data is None else len(self.val_data[0])
        self.log(
            f"compiled {self.name} for {step.backend} in {compile_seconds:.1f} s "
            f"({len(self.loader.x)} training images, {n_val} validation images)"
        )
        if done:
            self.log(f"resuming after epoch {done} of {self.epochs}")

        weights = out / "weights.npz" if writes else None
        completed = saved = 0  # the last epoch this run completed / wrote to `weights` (0: none)
        pending, before = 0, None  # the epoch being saved, and the file it replaces
        interrupted = False
        try:
            for epoch in range(done + 1, self.epochs + 1):
                record = self.run_epoch(epoch)
                history.append(record)
                completed = epoch
                if weights is not None:
                    pending, before = epoch, _file_id(weights)
                    self.checkpoint(weights)
                    saved = epoch
                self.log(_epoch_line(record, self.epochs))
                if self.scheduler is not None:
                    _step_scheduler(self.scheduler, record)
        except KeyboardInterrupt:
            interrupted = True
            if weights is not None and pending > saved and _file_id(weights) != before:
                saved = pending  # the new file was renamed into place just before the interrupt
            self.log(_interrupted(completed, saved, weights))
        curves = None
        if weights is not None:
            curves, interrupted = self._write_results(out, history, saved, weights, interrupted)
        return TrainResult(history, weights if saved else None, curves, compile_seconds, interrupted, step)

    def _write_results(
        self, out: Path, history: list[EpochRecord], saved: int, weights: Path, interrupted: bool
    ) -> tuple[Path | None, bool]:
        curves, written = None, []
        if saved:
            written.append(f"weights: {weights}" + (f" (epoch {saved})" if saved < self.epochs else ""))
        if history:  # nothing is written (or overwritten) for a run that completed no epoch
            try:
                records = json.dumps([dataclasses.asdict(r) for r in history], indent=2)
                written.append(f"history: {atomic_write(out / 'history.json', records)}")
                curves = plot_curves(history, out / "curves.png")
                written.append(f"curves:  {curves}")
            except KeyboardInterrupt:  # a second Ctrl-C: each file is still old-or-new, never torn
                interrupted, curves = True, None
                self.log(
                    "interrupted while writing the history and curves: "
                    + ("kept only:" if written else "kept nothing")
                )
        for line in written:
            self.log(line)
        return curves, interrupted

    def _resume(self, folder: Path) -> tuple[list[EpochRecord], int]:
        """Load ``folder``'s weights and optimizer state; the epochs they hold (from the step
        count: weights are saved after whole epochs) and the history of those epochs."""
        weights = folder / "weights.npz"
        if not weights.is_file():
            raise ConvforgeError(f"fit: cannot resume from {folder}: it has no weights.npz")
        self.step.load(str(weights))
        done, rest = divmod(self.step.steps, len(self.loader))
        if rest:
            raise ConvforgeError(
                f"fit: cannot resume from {weights}: its {self.step.steps} steps are not whole epochs "
                f"of {len(self.loader)} batches; resume with that run's data and batch size"
            )
        history = [r for r in _read_history(folder / "history.json") if r.epoch <= done]
        self.loader.set_epoch(done)
        if self.scheduler is not None:
            for record in history[-done:] if len(history) == done else [None] * done:
                _step_scheduler(self.scheduler, record)  # the schedule goes on where the run stopped
        return history, done


def trainer_class(step: TrainStep) -> type[Trainer]:
    """:class:`Trainer`, or for a data-parallel step (``compile_train(..., distributed=)``)
    ``convforge.distributed.training.DistributedTrainer``: sharded data, rank 0 writes."""
    if step.communicator is None:
        return Trainer
    from convforge.distributed.training import DistributedTrainer  # it subclasses Trainer

    return DistributedTrainer


def _as_loader(data: Any, batch_size: int, seed: int, transform: Any) -> DataLoader:
    if isinstance(data, DataLoader):
        return data
    if isinstance(data, ArrayDataset):
        return data.loader(batch_size, seed=seed, transform=transform)
    x, y = _as_arrays(data)
    return DataLoader(x, y, batch_size, shuffle=True, seed=seed, transform=transform)


def _as_arrays(data: Any) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(data, DataLoader | ArrayDataset):
        return data.x, data.y
    if isinstance(data, tuple | list) and len(data) == 2:
        return data[0], data[1]
    raise ConvforgeError(
        f"fit: expected data as a DataLoader, a dataset or (x, y) arrays, given {type(data).__name__}"
    )


def _labels(y: np.ndarray) -> bool:
    """Whether ``y`` holds class labels, so accuracy means something."""
    return y.ndim == 1 and y.dtype.kind in "iu"


def _step_scheduler(scheduler: Any, record: EpochRecord | None) -> None:
    """``scheduler.step()``, or ``step(loss)`` for one that needs a metric (ReduceLROnPlateau)."""
    needs = [
        p
        for p in inspect.signature(scheduler.step).parameters.values()
        if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if needs:
        if record is None:
            raise ConvforgeError("fit: cannot resume a metric-driven schedule without the run's history.json")
        scheduler.step(record.loss)
    else:
        scheduler.step()


def _read_history(path: Path) -> list[EpochRecord]:
    """The records of ``history.json`` (none if the file is missing)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    try:
        return [EpochRecord(**entry) for entry in json.loads(text)]
    except (ValueError, TypeError) as exc:
        raise ConvforgeError(f"fit: {path} is not a history.json written by convforge: {exc}") from None


def _epoch_line(record: EpochRecord, epochs: int) -> str:
    accuracies = "".join(
        f"  {label} {value:6.2%}"
        for label, value in (("train acc", record.train_accuracy), ("val acc", record.val_accuracy))
        if value is not None
    )
    return (
        f"epoch {record.epoch:>2}/{epochs}  loss {record.loss:.4f}{accuracies}  "
        f"{record.seconds:5.1f} s  ({record.images_per_second:,.0f} img/s)"
    )


def _file_id(path: Path) -> tuple[int, int, int] | None:
    """Which file ``path`` is now: an atomic save replaces it by another inode."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _interrupted(completed: int, saved: int, weights: Path | None) -> str:
    """What an interrupted run kept, and nothing more."""
    if weights is None:
        return (
            f"interrupted after epoch {completed}"
            if completed
            else "interrupted before the first epoch finished"
        )
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
    epochs: int,
    progress: bool,
    train_set: tuple | None,
    val_set: tuple | None,
) -> EpochRecord:
    from tqdm import tqdm

    losses, seen = [], 0
    start = time.perf_counter()
    bar = tqdm(
        loader,
        total=len(loader),
        desc=f"epoch {epoch}/{epochs}",
        unit="batch",
        disable=not progress,
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
    train_acc = None if train_set is None else accuracy(net, *train_set)[0]
    val_acc = None if val_set is None else accuracy(net, *val_set)[0]
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
    for field, label in (("train_accuracy", "train"), ("val_accuracy", "validation")):
        points = [(r.epoch, 100 * getattr(r, field)) for r in history if getattr(r, field) is not None]
        if points:
            ax_acc.plot(*zip(*points), marker="o", label=label)
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    if ax_acc.lines:
        ax_acc.legend()
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return path
