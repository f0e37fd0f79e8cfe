"""Shape ops: flatten and reshape are views (no kernel, no copy); concat and slice copy.

A view's output aliases its input's buffer; the memory plan keeps that buffer alive for
as long as the view is used (see ``convforge.passes.memory_plan.ALIAS_OPS``).
"""

from __future__ import annotations

from convforge.backends.numba_cpu.kernels import lowering


@lowering("flatten", "reshape")
def _(ctx, node, ins, outs):
    ctx.view(node.outputs[0], f"{ins[0]}.reshape(({ctx.shape_expr(node.outputs[0])}))")


@lowering("concat")
def _(ctx, node, ins, outs):
    dim = node.attrs["dim"] % node.outputs[0].type.rank
    ctx.line(f"np.concatenate(({', '.join(ins)},), axis={dim}, out={outs[0]})")


@lowering("slice")
def _(ctx, node, ins, outs):
    a = node.attrs
    rank = node.inputs[0].type.rank
    dim = a["dim"] % rank
    index = ", ".join([":"] * dim + [f"{a['start']}:{a['stop']}"])
    ctx.line(f"{outs[0]}[...] = {ins[0]}[{index}]")
