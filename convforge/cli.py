"""The ``convforge`` command line: train, show (alias compile), evaluate, bench."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from convforge.errors import ConvforgeError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except ConvforgeError as exc:
        print(f"convforge: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `convforge show lenet5 | head -3`: the reader left; so do we
        _silence_stdout()
        return 141  # 128 + SIGPIPE, what a shell reports for a writer killed by the pipe
    except OSError as exc:  # a path the user gave that cannot be read or written
        where = f": {exc.filename}" if exc.filename else ""
        print(f"convforge: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # before `train` could report what it kept (it reports its own)
        print("convforge: interrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    from convforge.backends import BACKENDS
    from convforge.models import MODELS

    p = argparse.ArgumentParser(prog="convforge", description="A compiler for convolutional neural networks.")
    sub = p.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train a zoo model on MNIST (the bundled 5,000-image subset by default)")
    t.add_argument("--model", default="lenet5", choices=[m for m in MODELS if m != "alexnet"])
    t.add_argument("--epochs", type=_positive_int, default=10)
    t.add_argument("--batch-size", type=_positive_int, default=64)
    t.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    t.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.05 SGD, 1e-3 Adam)")
    t.add_argument(
        "--schedule", default="cosine", choices=["cosine", "constant"], help="learning-rate schedule"
    )
    t.add_argument("--momentum", type=float, default=0.9)
    t.add_argument("--weight-decay", type=float, default=0.0)
    t.add_argument(
        "--backend", default=None, choices=list(BACKENDS), help="default: $CONVFORGE_BACKEND or numba-cpu"
    )
    t.add_argument("--augment", action="store_true", help="rotation, translation, scaling and noise")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--out", default="runs/{model}", help="where weights, curves.png and history.json go")
    t.add_argument("--limit", type=_positive_int, default=None, help="train on the first N images only")
    t.add_argument("--data", default=None, help="directory with the four MNIST IDX files (full MNIST)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(run=_train)

    for name in ("show", "compile"):
        s = sub.add_parser(
            name, help="print a model's IR after any pass, its generated kernels, or a picture"
        )
        s.add_argument("model", help="a zoo model name or an .onnx file")
        s.add_argument(
            "--after", default=None, help="stop after this pass of the pipeline (e.g. canonicalize, fuse)"
        )
        s.add_argument("--train", action="store_true", help="show the joint training program instead")
        s.add_argument("--source", action="store_true", help="print the generated kernel source")
        s.add_argument(
            "--graph", default=None, metavar="FILE", help="write a picture of the graph (.png or .svg)"
        )
        s.add_argument("--backend", default=None, choices=list(BACKENDS))
        s.set_defaults(run=_show)

    e = sub.add_parser("evaluate", help="accuracy and confusion matrix of saved weights on the test split")
    e.add_argument("weights", help="a weights file (.npz, .safetensors) for --model, or an .onnx model")
    e.add_argument("--model", default="lenet5", choices=list(MODELS))
    e.add_argument("--backend", default=None, choices=list(BACKENDS))
    e.add_argument("--data", default=None)
    e.set_defaults(run=_evaluate)

    b = sub.add_parser("bench", help="time convforge against PyTorch eager (needs torch), or an .onnx model")
    b.add_argument("--quick", action="store_true", help="fewer repetitions")
    b.add_argument("--threads", type=_positive_int, default=2)
    b.add_argument("model", nargs="?", default=None, help="an .onnx file: convforge against onnxruntime")
    b.add_argument("--batch", type=int, default=1, help="batch size for an .onnx model")
    b.add_argument("--backend", default="numba-cpu", choices=list(BACKENDS), help="for an .onnx model")
    b.set_defaults(run=_bench)
    return p


def _positive_int(text: str) -> int:
    """An argparse type: an int >= 1 (``--epochs 0`` would train nothing and overwrite the
    history with ``[]``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _writable_folder(folder: Path, what: str) -> Path:
    """``folder``, created if missing; a ConvforgeError before any work if it cannot be
    created or written (``--out /proc/forbidden``)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConvforgeError(f"{what}: cannot create folder {folder}: {exc.strerror or exc}") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConvforgeError(f"{what}: folder {folder} is not writable")
    return folder


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's final flush raises no second error."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def _train(args: argparse.Namespace) -> int:
    from convforge.training import TrainConfig, train

    try:
        out = args.out.format(model=args.model)
    except (KeyError, IndexError, ValueError):
        raise ConvforgeError(
            f"convforge train --out: {args.out!r} may use only the placeholder {{model}}"
        ) from None
    _writable_folder(Path(out).expanduser(), "convforge train --out")

    config = TrainConfig(
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        optimizer=args.optimizer,
        lr=args.lr,
        schedule=args.schedule,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        backend=args.backend,
        augment=args.augment,
        seed=args.seed,
        out=args.out,
        limit=args.limit,
        data_path=args.data,
        progress=not args.no_progress,
    )
    result = train(config)
    return 130 if result.interrupted else 0


def _show(args: argparse.Namespace) -> int:
    from convforge.show import model_graph

    if args.graph:  # checked before the (slow) compile
        _writable_folder(Path(args.graph).expanduser().parent, "convforge show --graph")

    graph, source = model_graph(
        args.model, after=args.after, training=args.train, backend=args.backend, want_source=args.source
    )
    print(graph)
    if args.source:
        print(source)
    if args.graph:
        from convforge.viz import draw_graph

        path = draw_graph(graph, args.graph)
        print(f"graph picture: {path}", file=sys.stderr)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from convforge.data import mnist
    from convforge.frontend.compile import compile
    from convforge.models import get_model
    from convforge.serialization import load
    from convforge.training import accuracy, confusion_matrix

    if args.weights.lower().endswith(".onnx"):
        net = _onnx_model_for_mnist(args.weights, args.backend)
    else:
        model, shape = get_model(args.model)
        net = compile(model, (None, *shape), backend=args.backend)
        net.load_state_dict(load(args.weights))
    _, (x_test, y_test) = mnist(args.data)
    acc, preds = accuracy(net, x_test, y_test)
    matrix = confusion_matrix(y_test, preds)
    print(f"accuracy on {len(y_test)} test images: {acc:.2%}")
    print("confusion matrix (rows: true label, columns: predicted)")
    print("     " + " ".join(f"{c:>4}" for c in range(matrix.shape[1])))
    for i, row in enumerate(matrix):
        print(f"{i:>4} " + " ".join(f"{v:>4}" for v in row))
    totals = matrix.sum(axis=1)
    recalls = [f"{hit / total:.2f}" if total else "n/a" for hit, total in zip(np.diag(matrix), totals)]
    print(f"per-class recall: {' '.join(recalls)}")
    missing = [str(c) for c, total in enumerate(totals) if not total]
    if missing:
        print(f"(no test images of class {', '.join(missing)}: recall n/a)")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from numba.np.ufunc import parallel

    # Numba sizes its thread pool once per process: a value set after the pool started
    # would make the next reading of Numba's configuration raise
    if not parallel._is_initialized:
        os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    if args.model is not None:
        return _bench_onnx(args)
    from convforge.bench import run_benchmarks

    print(run_benchmarks(quick=args.quick, threads=args.threads))
    return 0


def _onnx_model_for_mnist(path: str, backend: str | None):
    """An .onnx classifier compiled for the MNIST test split (input [N, 1, 28, 28], 10 classes)."""
    from convforge.frontend.compile import compile
    from convforge.onnx import load

    model = load(path)
    if tuple(model.input_shape[1:]) != (1, 28, 28):
        raise ConvforgeError(
            f"convforge evaluate: {path} takes input {list(model.input_shape)}; the MNIST test split "
            "needs [N, 1, 28, 28]"
        )
    return compile(model, (None, 1, 28, 28), backend=backend)


def _bench_onnx(args: argparse.Namespace) -> int:
    from convforge.bench import run_onnx_benchmark

    if not args.model.lower().endswith(".onnx"):
        raise ConvforgeError(f"convforge bench: {args.model!r} is not an .onnx file")
    if args.batch < 1:
        raise ConvforgeError(f"convforge bench: --batch must be >= 1, got {args.batch}")
    print(run_onnx_benchmark(args.model, batch=args.batch, threads=args.threads, quick=args.quick,
                             backend=args.backend))  # fmt: skip
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
