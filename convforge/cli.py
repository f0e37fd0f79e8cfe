"""The ``convforge`` command line: train, show (alias compile), evaluate, bench."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

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
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch-size", type=int, default=64)
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
    t.add_argument("--limit", type=int, default=None, help="train on the first N images only")
    t.add_argument("--data", default=None, help="directory with the four MNIST IDX files (full MNIST)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(run=_train)

    for name in ("show", "compile"):
        s = sub.add_parser(
            name, help="print a model's IR after any pass, its generated kernels, or a picture"
        )
        s.add_argument("model", help="a zoo model name")
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
    e.add_argument("weights")
    e.add_argument("--model", default="lenet5", choices=list(MODELS))
    e.add_argument("--backend", default=None, choices=list(BACKENDS))
    e.add_argument("--data", default=None)
    e.set_defaults(run=_evaluate)

    b = sub.add_parser("bench", help="time convforge against PyTorch eager (needs torch)")
    b.add_argument("--quick", action="store_true", help="fewer repetitions")
    b.add_argument("--threads", type=int, default=2)
    b.set_defaults(run=_bench)
    return p


def _train(args: argparse.Namespace) -> int:
    from convforge.training import TrainConfig, train

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
    print(f"per-class recall: {' '.join(f'{r:.2f}' for r in np.diag(matrix) / matrix.sum(axis=1))}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    from convforge.bench import run_benchmarks

    print(run_benchmarks(quick=args.quick, threads=args.threads))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
