"""The ``convforge`` command line: train, show (alias compile), evaluate, bench.

``--model`` takes a zoo name or ``path/to/file.py:ClassName``: that file is imported (it
runs the user's code, as they asked) and the class built without arguments
(:mod:`convforge.usermodel`). A model that cannot be found or built is a usage error:
one line on stderr, exit code 2, as argparse reports a bad flag.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from convforge.errors import ConvforgeError
from convforge.usermodel import ModelSpecError, is_file_spec


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except ModelSpecError as exc:  # what the user named does not exist: a usage error
        print(f"convforge {args.command}: error: {exc}", file=sys.stderr)
        return 2
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
    from convforge.backends import NAMES as BACKENDS  # the backends and their aliases
    from convforge.models import MODELS

    p = argparse.ArgumentParser(prog="convforge", description="A compiler for convolutional neural networks.")
    p.add_argument("--version", action="version", version=f"convforge {_version()}")
    sub = p.add_subparsers(dest="command")
    trainable = _model_type([m for m in MODELS if m != "alexnet"])
    spec_help = "a zoo model ({}) or path/to/file.py:ClassName (imports that file)"

    t = sub.add_parser("train", help="train a zoo model on MNIST (the bundled 5,000-image subset by default)")
    t.add_argument(
        "--model", default="lenet5", type=trainable, help=spec_help.format(", ".join(trainable.names))
    )
    t.add_argument("--epochs", type=_positive_int, default=10, help="total epochs (with --resume too)")
    t.add_argument("--batch-size", type=_positive_int, default=64)
    _optimizer_args(t)
    t.add_argument(
        "--backend", default=None, choices=list(BACKENDS), help="default: $CONVFORGE_BACKEND or numba-cpu"
    )
    t.add_argument("--augment", action="store_true", help="rotation, translation, scaling and noise")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument(
        "--out",
        default=None,
        help="where weights, curves.png and history.json go (default: runs/{model}, or the --resume folder)",
    )
    t.add_argument(
        "--resume", default=None, metavar="DIR",
        help="continue the run in DIR (its weights.npz, optimizer state and history.json) up to --epochs",
    )  # fmt: skip
    t.add_argument("--limit", type=_positive_int, default=None, help="train on the first N images only")
    t.add_argument("--data", default=None, help="directory with the four MNIST IDX files (full MNIST)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(run=_train)

    for name in ("show", "compile"):
        s = sub.add_parser(
            name, help="print a model's IR after any pass, its generated kernels, or a picture"
        )
        s.add_argument(
            "model", nargs="?", default=None, type=_model_type(list(MODELS), onnx=True),
            help="a zoo model name, an .onnx file, or path/to/file.py:ClassName",
        )  # fmt: skip
        s.add_argument(
            "--model", dest="model_option", default=None, metavar="MODEL", type=_model_type(list(MODELS)),
            help="the same as the positional model (as train and evaluate take it)",
        )  # fmt: skip
        s.add_argument(
            "--input-shape", default=None, type=_shape, metavar="C,H,W",
            help="input shape without the batch, for a file model (default: its input_shape or 1,28,28)",
        )  # fmt: skip
        s.add_argument(
            "--after", default=None, help="stop after this pass of the pipeline (e.g. canonicalize, fuse)"
        )
        s.add_argument(
            "--train", action="store_true",
            help="show the joint training program `convforge train` runs with the same optimizer flags",
        )  # fmt: skip
        _optimizer_args(s)
        s.add_argument(
            "--forward-only", action="store_true", help="with --graph: draw only the forward phase"
        )
        s.add_argument("--source", action="store_true", help="print the generated kernel source")
        s.add_argument(
            "--tune", action="store_true",
            help="pick each layer's algorithm by timing the candidates (recorded in the tuning log)",
        )  # fmt: skip
        s.add_argument(
            "--graph", default=None, metavar="FILE", help="write a picture of the graph (.png or .svg)"
        )
        s.add_argument("--backend", default=None, choices=list(BACKENDS))
        s.set_defaults(run=_show)

    e = sub.add_parser("evaluate", help="accuracy and confusion matrix of saved weights on the test split")
    e.add_argument("weights", help="a weights file (.npz, .safetensors) for --model, or an .onnx model")
    e.add_argument("--model", default="lenet5", type=_model_type(list(MODELS)),
                   help=spec_help.format(", ".join(MODELS)))  # fmt: skip
    e.add_argument("--backend", default=None, choices=list(BACKENDS))
    e.add_argument("--data", default=None)
    e.set_defaults(run=_evaluate)

    b = sub.add_parser("bench", help="time convforge against PyTorch eager (needs torch), or an .onnx model")
    b.add_argument("--quick", action="store_true", help="fewer repetitions")
    b.add_argument("--threads", type=_positive_int, default=2)
    b.add_argument("model", nargs="?", default=None, help="an .onnx file: convforge against onnxruntime")
    b.add_argument("--batch", type=int, default=1, help="batch size for an .onnx model")
    b.add_argument("--backend", default="numba-cpu", choices=list(BACKENDS), help="for an .onnx model")
    b.add_argument(
        "--torch",
        default=None,
        metavar="FILE.py:CLASS",
        help="for an .onnx model: the torch.nn.Module class it was exported from (adds torch eager)",
    )
    b.add_argument("--suite", action="store_true", help="the CNN workload table of benchmarks/suite.py")
    b.add_argument("--only", default=None, metavar="NAME", help="with --suite: one workload (or name prefix)")
    b.add_argument(
        "--profile", default=None, metavar="NAME", help="with --suite: kernel times of one workload"
    )
    b.set_defaults(run=_bench)
    return p


def _version() -> str:
    from convforge import __version__

    return __version__


def _optimizer_args(p: argparse.ArgumentParser) -> None:
    """The optimizer flags of ``train``, shared with ``show --train`` (same program shown)."""
    p.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: 0.05 SGD, 1e-3 Adam)")
    p.add_argument(
        "--schedule", default="cosine", choices=["cosine", "constant"], help="learning-rate schedule"
    )
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)


def _model_type(names: Sequence[str], onnx: bool = False):
    """An argparse type: a zoo name in ``names``, a ``file.py:ClassName`` (checked when loaded),
    or with ``onnx`` an ``.onnx`` path; anything else is a usage error listing the choices."""

    def parse(text: str) -> str:
        if text in names or is_file_spec(text) or (onnx and text.lower().endswith(".onnx")):
            return text
        extra = ", an .onnx file" if onnx else ""
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a zoo model ({', '.join(names)}){extra} or path/to/file.py:ClassName"
        )

    parse.names = list(names)  # type: ignore[attr-defined]
    parse.__name__ = "model"
    return parse


def _shape(text: str) -> tuple[int, ...]:
    """An argparse type: ``1,28,28`` -> ``(1, 28, 28)``, every entry >= 1."""
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected ints separated by commas like 1,28,28, got {text!r}"
        ) from None
    if not dims or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"every entry must be >= 1, got {text!r}")
    return dims


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
    from convforge.usermodel import display_name, resolve_model

    resolve_model(args.model)  # a missing file or class fails now, before any data loads
    if args.resume is not None and not Path(args.resume).expanduser().is_dir():
        raise ModelSpecError(f"--resume {args.resume}: no such run folder")
    pattern = args.out if args.out is not None else (args.resume or "runs/{model}")
    try:
        out = pattern.format(model=display_name(args.model))
    except (KeyError, IndexError, ValueError):
        raise ConvforgeError(
            f"convforge train --out: {pattern!r} may use only the placeholder {{model}}"
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
        out=out.replace("{", "{{").replace("}", "}}"),  # already formatted: braces are literal
        limit=args.limit,
        data_path=args.data,
        progress=not args.no_progress,
        resume=args.resume,
    )
    result = train(config)
    return 130 if result.interrupted else 0


def _show(args: argparse.Namespace) -> int:
    from convforge.show import model_graph, training_settings

    if args.model and args.model_option and args.model != args.model_option:
        raise ModelSpecError(f"two models given: {args.model} and --model {args.model_option}")
    name = args.model_option or args.model
    if name is None:
        raise ModelSpecError("name a model: a zoo name, an .onnx file or --model path/to/file.py:ClassName")
    if args.graph:  # checked before the (slow) compile
        _writable_folder(Path(args.graph).expanduser().parent, "convforge show --graph")

    settings = training_settings(args.optimizer, args.lr, args.momentum, args.weight_decay, args.schedule)
    graph, source = model_graph(
        name,
        after=args.after,
        training=args.train,
        backend=args.backend,
        want_source=args.source,
        input_shape=args.input_shape,
        optimizer=settings.optimizer,
        tune=args.tune,
    )
    if args.train:
        print(f"# {settings.describe()}")
    print(graph)
    if args.source:
        print(source)
    if args.graph:
        from convforge.viz import draw_graph

        path = draw_graph(graph, args.graph, forward_only=args.forward_only)
        print(f"graph picture: {path}", file=sys.stderr)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    import numpy as np

    from convforge.data import mnist
    from convforge.frontend.compile import compile
    from convforge.metrics import confusion_matrix
    from convforge.serialization import load
    from convforge.training import accuracy
    from convforge.usermodel import resolve_model

    if args.weights.lower().endswith(".onnx"):
        net = _onnx_model_for_mnist(args.weights, args.backend)
    else:
        model, shape = resolve_model(args.model)
        net = compile(model, (None, *shape), backend=args.backend)
        net.load_state_dict(load(args.weights))
    _, (x_test, y_test) = mnist(args.data)
    acc, preds = accuracy(net, x_test, y_test)
    matrix = confusion_matrix(y_test, preds, num_classes=10)
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
    if args.suite:
        from convforge.bench import suite_module

        suite = suite_module()
        if args.profile is not None:
            print(suite.profile(args.profile, threads=args.threads, reps=3 if args.quick else 5))
        else:
            print(suite.run_suite(quick=args.quick, threads=args.threads, only=args.only))
        return 0
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
    torch_model = None
    if args.torch is not None:
        torch_model = _torch_model(args.torch)
    print(run_onnx_benchmark(args.model, batch=args.batch, threads=args.threads, quick=args.quick,
                             backend=args.backend, torch_model=torch_model))  # fmt: skip
    return 0


def _torch_model(spec: str):
    """``--torch FILE.py:CLASS``: the user's torch model class, built without arguments."""
    try:
        import torch
    except ImportError:
        raise ConvforgeError("convforge bench --torch needs PyTorch: pip install torch") from None
    from convforge.usermodel import load_class

    if not is_file_spec(spec):
        raise ModelSpecError(f"--torch {spec}: expected path/to/file.py:ClassName")
    cls = load_class(spec, base=torch.nn.Module, what="--torch", kind="torch.nn.Module")
    try:
        return cls()
    except Exception as exc:  # noqa: BLE001 - the user's constructor failed: say so, no traceback
        raise ModelSpecError(f"--torch {spec}: {cls.__name__}() raised {type(exc).__name__}: {exc}") from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
