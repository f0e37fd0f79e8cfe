"""``convforge bench --suite``: the workload table, FLOP counts, workload selection, and a
smoke run of one small workload and of the per-kernel profile."""

from __future__ import annotations

import math

import pytest

from convforge.bench import suite_module
from convforge.cli import main
from convforge.errors import ConvforgeError

suite = suite_module()


def test_every_issue_workload_is_in_the_table():
    names = {w.name for w in suite.WORKLOADS}
    assert len(names) == len(suite.WORKLOADS) == 13
    assert {w.network for w in suite.WORKLOADS} == set(suite.NETWORKS)
    assert [w.name for w in suite.select("lenet5-infer")] == ["lenet5-infer-b64", "lenet5-infer-b256"]
    assert [w.name for w in suite.select("alexnet-infer-b1")] == ["alexnet-infer-b1"]
    with pytest.raises(ConvforgeError, match="no workload 'lenet'.*lenet5-train-b64"):
        suite.select("lenet")


def test_flops_of_lenet_and_training_factor():
    lenet_infer, lenet_train = suite.select("lenet5-infer-b64")[0], suite.select("lenet5-train-b64")[0]
    model = suite.build(lenet_infer)[0]
    # conv1 2*6*28*28*25, conv2 2*16*10*10*150, fc 2*(400*120 + 120*84 + 84*10), per image
    per_image = 235_200 + 480_000 + 117_840
    assert suite.workload_flops(lenet_infer, model) == 64 * per_image
    assert suite.workload_flops(lenet_train, model) == 3 * 64 * per_image


def test_table_builder():
    w = suite.select("vgg-cifar-train-b64")[0]
    row = suite.Row(w, 0.150, {"torch": 0.100}, gflops=40.0, cold=30.0, warm=2.0, rss=300.0, torch_rss=400.0)
    i = suite.select("resnet-cifar-infer-b1")[0]
    inf = suite.Row(i, 0.004, {"torch": 0.002, "torch.compile": "failed", "onnxruntime": 0.008}, gflops=10.0,
                    max_rel_diff=1.5e-6)  # fmt: skip
    text = suite.table(
        [row, inf], peak=160.0, threads=2, notes=["resnet-cifar-infer-b1: torch.compile skipped"]
    )
    lines = text.splitlines()
    assert lines[0].startswith("| workload (2 threads) | convforge ms | / torch eager |")
    assert (
        lines[2] == "| VGG-style CIFAR train B=64 | 150.00 | 1.50 | – | – | 40.0 | 25% | 30.0 s | 2.0 s "
        "| 300 (400) | – |"
    )
    assert (
        lines[3]
        == "| ResNet-style CIFAR inference B=1 | 4.00 | 2.00 | – | 0.50 | 10.0 | 6% | – | – | – | 1.5e-06 |"
    )
    assert "machine peak: 160 GFLOP/s" in text and "note: resnet-cifar-infer-b1" in text


def test_smoke_one_workload_in_process():
    text = suite.run_suite(
        quick=True, only="lenet5-infer-b64", peers=("torch",), startup=False, log=lambda _: None
    )
    row = text.splitlines()[2].split(" | ")
    assert row[0] == "| LeNet-5 inference B=64"
    assert float(row[1]) > 0 and float(row[2]) > 0
    assert float(row[-1].rstrip(" |")) < 1e-4  # max rel diff to torch eager


def test_profile_times_every_kernel_call(capsys):
    assert main(["bench", "--suite", "--quick", "--profile", "lenet5-infer-b64"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("profile of lenet5-infer-b64")
    calls = [line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(calls) >= 4  # two fused conv kernels and the linear layers
    rates = [c.split(" | ")[4] for c in calls]
    assert all(r == "–" or (float(r) >= 0 and not math.isnan(float(r))) for r in rates)
    assert sum(r != "–" for r in rates) == 5  # one rated call per conv / linear node
