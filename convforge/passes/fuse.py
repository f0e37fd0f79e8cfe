"""Fuse conv2d/conv1d/linear -> [batch_norm] -> [activations] -> [pool] chains into ``fusion`` nodes.

A chain grows while the current value has exactly one user, the next op of the pattern,
and is not a graph output; the fusion node holds the chain as its region. In training the
pre-pool activation is also read by the backward ops, so ``conv -> act -> max_pool2d``
is fused differently: the forward region ends in ``max_pool2d_argmax`` (one byte per
output instead of the full activation) and the backward pair ``max_pool2d_backward ->
act_backward`` becomes ``act_backward(gy, y) -> max_pool2d_backward_argmax(., argmax)``.
That reorder is exact because the activations are monotone: at a window's maximum the
activation's derivative is a function of the pooled output.

With ``conv_backward`` (numba-cpu) that backward pair and the conv's gradient ops that read
its result (weight, bias and input gradients) become one region, so the conv-output
gradient is rebuilt per image from the pooled gradient inside the kernel instead of being
written to memory and read back three times.

With ``conv_backward`` and ``batch_norm`` (both on in numba-cpu's training pipeline; the
numba-cuda pipeline sets neither), a training batch norm joins the conv as well:
``conv2d -> batch_norm_train -> [monotone activation]`` becomes one forward region that
also returns the conv output and the statistics, and ``[act_backward] ->
batch_norm_backward -> conv2d_backward_weight [-> conv2d_backward_input]`` one backward
region, so neither the normalised pre-activation nor the conv-output gradient is stored.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from convforge.ir import scalar
from convforge.ir.graph import Graph, Node, Value
from convforge.ir.ops import registry
from convforge.ir.ops.fusion import pattern, pool_fusable
from convforge.ir.ops.registry import FusionKind
from convforge.passes.manager import Pass, register_pass


def _kind(node: Node) -> FusionKind:
    return registry.get(node.op).fusion


def _is_epilogue(node: Node) -> bool:
    """An elementwise op of one input with a scalar expression: it runs on the producer's output."""
    return _kind(node) is FusionKind.ELEMENTWISE and scalar.kind(node.op) == "unary"


def _only_user(v: Value, graph: Graph) -> Node | None:
    if len(v.users) != 1 or v in graph.outputs:
        return None
    user = v.users[0]
    return user if user.inputs and user.inputs[0] is v and v not in user.inputs[1:] else None


def forward_chain(graph: Graph, producer: Node, training: bool) -> list[Node]:
    """The longest fusable chain starting at ``producer`` (single-user links only):
    an out-fusable producer, a broadcast batch norm (inference), elementwise epilogue ops,
    and a pool closing a conv2d chain."""
    chain = [producer]
    stage = 0  # 0: after producer, 1: after bn, 2: after activations, 3: after pool
    while True:
        nxt = _only_user(chain[-1].outputs[0], graph) if len(chain[-1].outputs) == 1 else None
        if nxt is None:
            break
        if nxt.op == "batch_norm" and stage == 0 and not training:
            stage = 1
        elif _is_epilogue(nxt) and stage <= 2:
            stage = 2
        elif (
            _kind(nxt) is FusionKind.POOL
            and stage <= 2
            and producer.op == "conv2d"
            and pool_fusable(nxt, training)
        ):
            chain.append(nxt)
            break
        else:
            break
        chain.append(nxt)
    return chain


def _build_region(chain: list[Node], ops: list[tuple[str, dict]] | None = None) -> tuple[Graph, list[Value]]:
    """A region graph copying ``chain`` (ops optionally renamed); returns it and its external inputs."""
    region = Graph("region")
    external: list[Value] = []
    mapping: dict[int, Value] = {}
    prev: Value | None = None
    for i, node in enumerate(chain):
        args = []
        for j, v in enumerate(node.inputs):
            if i > 0 and j == 0:
                args.append(prev)
                continue
            if id(v) not in mapping:
                mapping[id(v)] = region.add_input(region.fresh_name(_safe(v.name)), v.type)
                external.append(v)
            args.append(mapping[id(v)])
        op, attrs = (node.op, dict(node.attrs)) if ops is None else ops[i]
        out = region.create_node(op, args, attrs)
        prev = out.outputs[0]
    region.set_outputs(list(region.nodes[-1].outputs))
    return region, external


def _safe(name: str) -> str:
    return "in_" + "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def _emit_fusion(graph: Graph, chain: list[Node], region: Graph, external: list[Value], before: Node) -> Node:
    with graph.inserting_before(before):
        return _fusion_node(graph, external, {**chain[0].meta, "fused_from": [n.op for n in chain]}, region)


def _fusion_node(graph: Graph, inputs: list[Value], meta: dict, region: Graph) -> Node:
    """A ``fusion`` node over ``region``, which must be one of the typed patterns."""
    node = graph.create_node(
        "fusion", inputs, {}, meta, output_types=[v.type for v in region.outputs], region=region
    )
    pattern(node)  # a region the backends could not read is a bug here, not in a backend
    return node


def _erase_chain(graph: Graph, nodes: list[Node]) -> None:
    for node in reversed(nodes):
        graph.erase(node)


def _fuse_training_pool(graph: Graph, producer: Node, conv_backward: bool = False) -> bool:
    """conv -> act -> max_pool2d whose backward reads the activation: the argmax rewrite."""
    z = producer.outputs[0]
    act = _only_user(z, graph) if len(z.users) == 1 else None
    if act is None or not registry.get(act.op).monotone:
        return False
    act_backward = registry.get(act.op).backward
    a = act.outputs[0]
    pools = [u for u in a.users if u.op == "max_pool2d" and u.inputs[0] is a]
    if len(pools) != 1 or not pool_fusable(pools[0], True) or a in graph.outputs:
        return False
    pool = pools[0]
    others = [u for u in a.users if u is not pool]
    pool_bwd = [u for u in others if u.op == "max_pool2d_backward" and u.inputs[1] is a]
    if len(pool_bwd) != 1 or any(u.op != act_backward for u in others if u is not pool_bwd[0]):
        return False
    pb = pool_bwd[0]
    gp = pb.outputs[0]
    act_bwd = [u for u in others if u is not pb]
    if len(act_bwd) != 1 or gp in graph.outputs or gp.users != act_bwd or act_bwd[0].inputs[0] is not gp:
        return False
    ab = act_bwd[0]
    if ab.inputs[1] is not a:
        return False
    # forward: producer -> act -> max_pool2d_argmax
    pattrs = dict(pool.attrs)
    region, external = _build_region(
        [producer, act, pool], [(producer.op, dict(producer.attrs)), (act.op, dict(act.attrs)),
                                ("max_pool2d_argmax", pattrs)]
    )  # fmt: skip
    fwd = _emit_fusion(graph, [producer, act, pool], region, external, pool)
    y, argmax = fwd.outputs
    graph.replace_all_uses_with(pool.outputs[0], y)
    # backward: act_backward(gy, y) -> max_pool2d_backward_argmax(., argmax)
    gy = pb.inputs[0]
    bregion = Graph("region")
    r_gy = bregion.add_input("gy", gy.type)
    r_y = bregion.add_input("y", y.type)
    r_am = bregion.add_input("argmax", argmax.type)
    g1 = bregion.call(ab.op, r_gy, r_y, **dict(ab.attrs))
    g2 = bregion.call("max_pool2d_backward_argmax", g1, r_am, input_size=tuple(a.shape[2:]), **pattrs)
    bregion.set_outputs([g2])
    with graph.inserting_before(ab):
        bwd = _fusion_node(graph, [gy, y, argmax], {**ab.meta, "fused_from": [pb.op, ab.op]}, bregion)
    graph.replace_all_uses_with(ab.outputs[0], bwd.outputs[0])
    _erase_chain(graph, [pb, ab])
    _erase_chain(graph, [producer, act, pool])
    if conv_backward:
        _fuse_conv_backward(graph, bwd, x=external[0], w=external[1])
    return True


def _fuse_conv_backward(graph: Graph, bwd: Node, x: Value, w: Value) -> bool:
    """Absorb the conv gradients reading ``bwd``'s output into one backward region.

    The users of the conv-output gradient must be exactly one ``conv2d_backward_weight``
    (of the conv's input), at most one bias ``reduce_sum`` and at most one
    ``conv2d_backward_input`` (of the conv's weight); the region's inputs are (gy, y,
    argmax, x[, w]) and its outputs those ops' results, in that order.
    """
    gz = bwd.outputs[0]
    if gz in graph.outputs:
        return False
    by_op: dict[str, Node] = {}
    for user in gz.users:
        if user.op in by_op:
            return False
        by_op[user.op] = user
    weight = by_op.pop("conv2d_backward_weight", None)
    bias = by_op.pop("reduce_sum", None)
    grad_in = by_op.pop("conv2d_backward_input", None)
    if by_op or weight is None or weight.inputs[0] is not x or weight.inputs[1] is not gz:
        return False
    if bias is not None and (tuple(bias.attrs["dims"]) != (0, 2, 3) or bias.attrs["keepdim"]):
        return False
    if grad_in is not None and (grad_in.inputs[0] is not gz or grad_in.inputs[1] is not w):
        return False
    consumers = [n for n in (weight, bias, grad_in) if n is not None]
    region = Graph("region")
    old = bwd.region
    # the weight is read only by the input gradient
    external = [*bwd.inputs, x, *([w] if grad_in is not None else [])]
    names = ["gy", "y", "argmax", "x", "w"]
    inner = {id(v): region.add_input(name, v.type) for v, name in zip(external, names)}
    for rv, ov in zip(old.inputs, bwd.inputs):
        inner[id(rv)] = inner[id(ov)]
    for node in old.nodes:
        out = region.create_node(node.op, [inner[id(v)] for v in node.inputs], dict(node.attrs))
        inner[id(node.outputs[0])] = out.outputs[0]
    inner[id(gz)] = inner[id(old.outputs[0])]
    results = []
    for node in consumers:
        out = region.create_node(node.op, [inner[id(v)] for v in node.inputs], dict(node.attrs))
        results.append(out.outputs[0])
    region.set_outputs(results)
    meta = {**bwd.meta, "fused_from": [*bwd.meta["fused_from"], *(n.op for n in consumers)]}
    with graph.inserting_before(bwd):
        fused = _fusion_node(graph, external, meta, region)
    for node, new in zip(consumers, fused.outputs):
        graph.replace_all_uses_with(node.outputs[0], new)
    _erase_chain(graph, [bwd, *consumers])
    return True


def _fuse_norm_forward(graph: Graph, conv: Node) -> bool:
    """conv2d -> batch_norm_train -> [monotone activation] in training: one NormForward region.

    The conv output may be read only by the batch norm and by its backward (which needs
    it); the batch norm's output only by the activation, if one is fused.
    """
    z = conv.outputs[0]
    bns = [u for u in z.users if u.op == "batch_norm_train" and u.inputs[0] is z]
    if (
        len(bns) != 1
        or z in graph.outputs
        or any(
            u is not bns[0]
            and not (u.op == "batch_norm_backward" and u.inputs[1] is z and u.inputs[0] is not z)
            for u in z.users
        )
    ):
        return False
    bn = bns[0]
    chain = [conv, bn]
    act = _only_user(bn.outputs[0], graph)
    if act is not None and registry.get(act.op).monotone and registry.get(act.op).backward:
        chain.append(act)
    outputs = [chain[-1].outputs[0], z, *bn.outputs[1:]]
    region, external = _copy_region(chain, outputs)
    fused = _emit_fusion(graph, chain, region, external, chain[0])
    for old, new in zip(outputs, fused.outputs):
        graph.replace_all_uses_with(old, new)
    _erase_chain(graph, chain)
    return True


def _fuse_norm_backward(graph: Graph, bn_bwd: Node) -> bool:
    """[act_backward] -> batch_norm_backward -> the conv's weight [and input] gradients: one
    NormBackward region. The conv-output gradient must be read by exactly one
    ``conv2d_backward_weight`` and at most one ``conv2d_backward_input``; a bias gradient
    (``reduce_sum``) or any other reader keeps it in memory, unfused."""
    gz = bn_bwd.outputs[0]
    by_op: dict[str, Node] = {}
    for user in gz.users:
        if user.op in by_op or user.inputs.count(gz) != 1:
            return False
        by_op[user.op] = user
    weight = by_op.pop("conv2d_backward_weight", None)
    grad_in = by_op.pop("conv2d_backward_input", None)
    if by_op or weight is None or gz in graph.outputs or weight.inputs[1] is not gz:
        return False
    if grad_in is not None and grad_in.inputs[0] is not gz:
        return False
    chain = [bn_bwd, weight, *([grad_in] if grad_in is not None else [])]
    gy = bn_bwd.inputs[0]
    act = gy.producer
    if (
        act is not None
        and act.op in scalar.monotone_backward_ops()
        and gy.users == [bn_bwd]
        and gy not in graph.outputs
        and bn_bwd.inputs[1:].count(gy) == 0
    ):
        chain.insert(0, act)
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    first = min(order[id(n)] for n in chain)
    outputs = [*bn_bwd.outputs[1:], *(n.outputs[0] for n in chain[-2 if grad_in else -1 :])]
    region, external = _copy_region(chain, outputs)
    # the region runs where its first node was: every input must already exist there
    if any(v.producer is not None and order[id(v.producer)] >= first for v in external):
        return False
    fused = _emit_fusion(graph, chain, region, external, chain[0])
    for old, new in zip(outputs, fused.outputs):
        graph.replace_all_uses_with(old, new)
    _erase_chain(graph, chain)
    return True


def _copy_region(chain: list[Node], outputs: list[Value]) -> tuple[Graph, list[Value]]:
    """A region graph copying ``chain`` whose outputs are (the copies of) ``outputs``;
    returns it and its external inputs, in order of first use."""
    region = Graph("region")
    external: list[Value] = []
    inner: dict[int, Value] = {}
    for node in chain:
        for v in node.inputs:
            if id(v) not in inner:
                inner[id(v)] = region.add_input(region.fresh_name(_safe(v.name)), v.type)
                external.append(v)
        copy = region.create_node(node.op, [inner[id(v)] for v in node.inputs], dict(node.attrs))
        inner.update((id(old), new) for old, new in zip(node.outputs, copy.outputs))
    region.set_outputs([inner[id(v)] for v in outputs])
    return region, external


@register_pass
@dataclass
class Fuse(Pass):
    """Producer + epilogue (+ pool) into one ``fusion`` node; ``training`` enables the argmax
    rewrite, ``conv_backward`` the fused conv gradients after it, and with both
    ``batch_norm`` (default on) the training batch-norm regions; ``batch_norm=false``
    keeps batch norm out of training regions (the A/B switch)."""

    name: ClassVar[str] = "fuse"
    training: bool = False
    conv_backward: bool = False
    batch_norm: bool = True

    def run(self, graph: Graph) -> bool:
        changed = False
        norm = self.training and self.conv_backward and self.batch_norm
        for node in list(graph.nodes):
            if node.graph is None or _kind(node) is not FusionKind.OUT_FUSABLE:
                continue
            if norm and node.op == "conv2d" and _fuse_norm_forward(graph, node):
                changed = True
                continue
            if self.training and node.op == "conv2d" and _fuse_training_pool(graph, node, self.conv_backward):
                changed = True
                continue
            chain = forward_chain(graph, node, self.training)
            if len(chain) < 2:
                continue
            region, external = _build_region(chain)
            fused = _emit_fusion(graph, chain, region, external, chain[-1])
            for old, new in zip(chain[-1].outputs, fused.outputs):
                graph.replace_all_uses_with(old, new)
            _erase_chain(graph, chain)
            changed = True
        if norm:
            for node in [n for n in graph.nodes if n.op == "batch_norm_backward"]:
                changed |= _fuse_norm_backward(graph, node)
        return changed
