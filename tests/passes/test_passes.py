"""Passes: before / expected IR for canonicalize, cse and dce, and the pass manager."""

from __future__ import annotations

import dataclasses

import pytest

from convforge.errors import PassError
from convforge.ir.graph import Graph
from convforge.ir.parser import parse
from convforge.passes import DumpIR, Pass, PassManager, PrintAfter, Timing, get_pass, parse_pipeline
from convforge.passes.manager import PassFailure, register_pass


def run(pipeline: str, text: str) -> str:
    graph = parse(text)
    PassManager.from_string(pipeline).run(graph)
    return str(graph)


def same(a: str, b: str) -> bool:
    return str(parse(a)) == str(parse(b))


def test_dce_drops_unused_nodes():
    before = """graph @g(%x: f32[N,4]) -> (f32[N,4]) {
  %1: f32[N,4] = relu(%x)
  %2: f32[N,4] = tanh(%x)
  %3: f32[N,4] = sigmoid(%2)
  return %1
}"""
    expected = """graph @g(%x: f32[N,4]) -> (f32[N,4]) {
  %1: f32[N,4] = relu(%x)
  return %1
}"""
    assert same(run("dce", before), expected)


def test_dce_can_drop_unused_inputs():
    graph = parse("""graph @g(%x: f32[N,4], %unused: f32[3]) -> (f32[N,4]) {
  %1: f32[N,4] = relu(%x)
  return %1
}""")
    PassManager([get_pass("dce", inputs=True)]).run(graph)
    assert [v.name for v in graph.inputs] == ["x"]


def test_cse_merges_equal_nodes_and_keeps_different_attrs():
    before = """graph @g(%x: f32[N,4]) -> (f32[N,4], f32[N,4], f32[N,4]) {
  %1: f32[N,4] = leaky_relu(%x) {negative_slope=0.1}
  %2: f32[N,4] = leaky_relu(%x) {negative_slope=0.1}
  %3: f32[N,4] = leaky_relu(%x) {negative_slope=0.2}
  %4: f32[N,4] = add(%1, %2)
  return %4, %2, %3
}"""
    expected = """graph @g(%x: f32[N,4]) -> (f32[N,4], f32[N,4], f32[N,4]) {
  %1: f32[N,4] = leaky_relu(%x) {negative_slope=0.1}
  %3: f32[N,4] = leaky_relu(%x) {negative_slope=0.2}
  %4: f32[N,4] = add(%1, %1)
  return %4, %1, %3
}"""
    assert same(run("cse", before), expected)


def test_canonicalize_flatten_reshape_scale_cast():
    before = """graph @g(%x: f32[N,2,3,4]) -> (f32[N,24]) {
  %1: f32[N,24] = flatten(%x) {start_dim=1, end_dim=-1}
  %2: f32[N,24] = scale(%1) {factor=1.0}
  %3: f32[N,24] = cast(%2) {dtype="f32"}
  %4: f32[N,6,4] = reshape(%3) {shape=[N,6,4]}
  %5: f32[N,24] = reshape(%4) {shape=[N,24]}
  %6: f32[N,24] = relu(%5)
  return %6
}"""
    after = run("canonicalize,dce", before)
    ops = [line.split("=")[1].split("(")[0].strip() for line in after.splitlines()[1:-2]]
    assert ops == ["reshape", "relu"]


def test_pipeline_strings_and_options():
    passes = parse_pipeline("canonicalize, cse,dce{inputs=true}")
    assert [p.name for p in passes] == ["canonicalize", "cse", "dce"]
    assert passes[2].inputs is True
    assert str(PassManager(passes)) == "canonicalize,cse,dce{inputs=true}"
    with pytest.raises(PassError, match="unknown pass 'nope'"):
        parse_pipeline("cse,nope")
    with pytest.raises(PassError, match="no option 'depth'"):
        parse_pipeline("dce{depth=3}")


def test_instruments_time_print_and_dump(tmp_path):
    graph = parse("""graph @g(%x: f32[N,4]) -> (f32[N,4]) {
  %1: f32[N,4] = relu(%x)
  %2: f32[N,4] = tanh(%x)
  return %1
}""")
    printed: list[str] = []
    timing = Timing()
    manager = PassManager.from_string(
        "cse,dce", [timing, PrintAfter(["dce"], printed.append), DumpIR(tmp_path)]
    )
    manager.run(graph)
    assert [name for name, _ in timing.times] == ["cse", "dce"]
    assert "dce" in timing.report()
    assert len(printed) == 1 and "tanh" not in printed[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000_input.txt", "001_cse.txt", "002_dce.txt"]
    assert "tanh" in (tmp_path / "000_input.txt").read_text()


@register_pass
@dataclasses.dataclass
class _Exploding(Pass):
    name = "test-explode"

    def run(self, graph: Graph) -> bool:
        raise PassFailure("cannot handle this node", graph.nodes[0])


@register_pass
@dataclasses.dataclass
class _Corrupting(Pass):
    name = "test-corrupt"

    def run(self, graph: Graph) -> bool:
        graph.nodes.reverse()  # breaks topological order: the verifier must catch it
        return True


def test_failing_pass_names_itself_the_passes_before_and_the_node():
    graph = parse("""graph @g(%x: f32[N,4]) -> (f32[N,4]) {
  %1: f32[N,4] = relu(%x)
  return %1
}""")
    with pytest.raises(PassError) as info:
        PassManager.from_string("cse,dce,test-explode").run(graph)
    message = str(info.value)
    assert "test-explode" in message and "passes before it: cse, dce" in message and "%1 = relu" in message


def test_verifier_runs_after_every_pass():
    graph = parse("""graph @g(%x: f32[N,4]) -> (f32[N,4]) {
  %1: f32[N,4] = relu(%x)
  %2: f32[N,4] = tanh(%1)
  return %2
}""")
    with pytest.raises(PassError, match="test-corrupt.*not defined before its use"):
        PassManager.from_string("test-corrupt").run(graph)
