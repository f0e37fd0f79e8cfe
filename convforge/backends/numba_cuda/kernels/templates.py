"""Source snippets every family's ``@cuda.jit`` templates are built from.

A kernel is a loop nest over the thread grid; the snippets here are its pieces, as lists
of source lines (:func:`indent` joins them):

* :func:`grid_loop`, :func:`block_loop`, :func:`thread_loop`: the grid-stride loop (one
  thread per element), the block-stride loop (one block per output of a reduction) and
  the loop of a block's threads over what it reduces;
* :func:`decode`: a flat row-major index split into coordinates (``n, c, y, x``);
* :func:`per_element`: the whole kernel of one thread per element of a 4-D array, the
  skeleton of the convolution and pooling kernels;
* :func:`map_kernel`: the whole kernel of one thread per element of a flat array, which
  the elementwise, activation, norm, loss, optimizer and shape families launch;
* :func:`block_reduce`: a shared-memory tree sum over the block;
* :func:`max_sum_exp`: the stable ``max`` and ``sum(exp(. - max))`` of a row (softmax and
  the cross-entropy loss).

Rendered, ``per_element("x, y", "y", ["n", "c", "oy", "ox"], ["C", "Ho", "Wo"], body)`` is::

    @cuda.jit(cache=True)
    def kernel(x, y):
        C = y.shape[1]
        Ho = y.shape[2]
        Wo = y.shape[3]
        i = cuda.grid(1)
        while i < y.size:
            q = i
            ox = q % Wo
            q //= Wo
            oy = q % Ho
            q //= Ho
            c = q % C
            n = q // C
            <body>
            i += cuda.gridsize(1)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from convforge.ir import scalar
from convforge.ir.graph import Node, Value


def nest(lines: Sequence[str], depth: int = 4) -> list[str]:
    """``lines`` (each may hold several) as the body of a block ``depth`` spaces in (``pass``
    when there are none)."""
    return [" " * depth + part for line in lines for part in line.split("\n")] or [" " * depth + "pass"]


def indent(lines: Sequence[str], depth: int) -> str:
    """:func:`nest` as one string."""
    return "\n".join(nest(lines, depth))


def consts(**values: Any) -> str:
    """Module constants ``NAME = value``, one per line (what a generated kernel is specialised
    on), then the blank lines before the next definition."""
    return "".join(f"{k} = {v}\n" for k, v in values.items()) + "\n\n"


def kernel(params: str, lines: Sequence[str], name: str = "kernel") -> str:
    """A ``@cuda.jit`` kernel ``name(params)`` with body ``lines``."""
    return f"@cuda.jit(cache=True)\ndef {name}({params}):\n{indent(lines, 4)}\n"


def device(name: str, params: str, lines: Sequence[str]) -> str:
    """A ``@cuda.jit(device=True)`` function ``name(params)`` with body ``lines``."""
    return f"@cuda.jit(device=True)\ndef {name}({params}):\n{indent(lines, 4)}\n\n\n"


# -- loops -------------------------------------------------------------------------------
def loop(var: str, start: str, bound: str, step: str, body: Sequence[str]) -> list[str]:
    """``var`` from ``start`` while below ``bound``, by ``step``: the shape of every strided loop."""
    return [f"{var} = {start}", f"while {var} < {bound}:", *nest(body), f"    {var} += {step}"]


def grid_loop(bound: str, body: Sequence[str], var: str = "i") -> list[str]:
    """One thread per index below ``bound``; a grid smaller than ``bound`` strides over the rest."""
    return loop(var, "cuda.grid(1)", bound, "cuda.gridsize(1)", body)


def block_loop(bound: str, body: Sequence[str], var: str) -> list[str]:
    """One block per index below ``bound`` (the outputs of a block reduction)."""
    return loop(var, "cuda.blockIdx.x", bound, "cuda.gridDim.x", body)


def thread_loop(bound: str, body: Sequence[str], var: str = "k") -> list[str]:
    """The block's ``RT`` threads (thread ``t``) over the indices below ``bound``."""
    return loop(var, "t", bound, "RT", body)


def decode(index: str, names: Sequence[str], sizes: Sequence[str], rest: str = "q") -> list[str]:
    """Lines splitting the flat row-major ``index`` into ``names`` (the last varies fastest);
    ``sizes[k]`` is the extent of ``names[k]`` (``sizes[0]`` is never read)."""
    if len(names) <= 1:
        return [f"{name} = {index}" for name in names]
    lines = [f"{rest} = {index}"]
    for k in range(len(names) - 1, 0, -1):
        if k == 1:
            lines += [f"{names[1]} = {rest} % {sizes[1]}", f"{names[0]} = {rest} // {sizes[1]}"]
        else:
            lines += [f"{names[k]} = {rest} % {sizes[k]}", f"{rest} //= {sizes[k]}"]
    return lines


def per_element(
    params: str, out: str, names: Sequence[str], sizes: Sequence[str], body: Sequence[str], setup=()
) -> str:
    """The kernel of one thread per element of the 4-D array ``out``: ``sizes`` name
    ``out.shape[1:]``, the thread's element is ``out[names]``; ``setup`` runs once per thread."""
    shapes = [f"{s} = {out}.shape[{k + 1}]" for k, s in enumerate(sizes)]
    index = decode("i", names, ["", *sizes])
    return kernel(params, [*shapes, *setup, *grid_loop(f"{out}.size", [*index, *body])])


def map_kernel(
    ctx,
    family: str,
    pattern: str,
    params: list[str],
    body: list[str],
    size: str,
    args: list[Any],
    total: int,
    prelude: str = "",
) -> None:
    """Generate and launch ``for i in range(size.size): body`` (one thread per element)."""
    src = prelude + kernel(", ".join(params), grid_loop(f"{size}.size", body))
    fn = ctx.kernel(family, pattern, src)
    blocks, threads = ctx.grid1d(total)
    ctx.launch(fn, blocks, threads, *args)


#: per operand of a scalar expression (``convforge.ir.scalar.OPERANDS``): the kernel
#: parameter holding it and the local it is loaded into
_OPERANDS = {"x": ("x", "v"), "a": ("a", "va"), "b": ("b", "vb"), "g": ("gy", "g"), "s": ("sv", "s")}


def pointwise(ctx, family: str, node: Node) -> None:
    """Launch the op's declared scalar expression, one thread per element: a unary or binary
    op (output ``y``) or an activation's backward op (output ``gx``)."""
    kind = scalar.kind(node.op)
    operands = scalar.OPERANDS[kind]
    out = "gx" if kind == "backward" else "y"
    params = [_OPERANDS[o][0] for o in operands]
    body = [f"{_OPERANDS[o][1]} = {_OPERANDS[o][0]}[i]" for o in operands]
    attrs = scalar.attrs_in_dtype(node.attrs, node.outputs[0].type.np_dtype)  # as the reference
    expr = scalar.expression(node.op, attrs, **{o: _OPERANDS[o][1] for o in operands})
    attrs = " {" + ", ".join(f"{k}={v!r}" for k, v in node.attrs.items()) + "}" if node.attrs else ""
    args = [ctx.flat(v) for v in (*node.inputs, node.outputs[0])]
    y = node.outputs[0]
    map_kernel(
        ctx, family, node.op + attrs, [*params, out], [*body, f"{out}[i] = {expr}"], out, args, ctx.numel(y)
    )


# -- reductions ----------------------------------------------------------------------------
def block_reduce(accs: list[str], shared: list[str]) -> list[str]:
    """Lines summing each ``accs[k]`` over the block into ``shared[k][0]``, then into ``accs[k]``.

    ``shared[k]`` are ``cuda.shared.array(RT, ...)`` arrays and ``t`` the thread index; the
    closing ``syncthreads`` lets the block reuse the arrays in its next block-stride turn.
    """
    lines = [f"{s}[t] = {a}" for a, s in zip(accs, shared)]
    lines += ["cuda.syncthreads()", "half = RT // 2", "while half > 0:", "    if t < half:"]
    lines += [f"        {s}[t] += {s}[t + half]" for s in shared]
    lines += ["    cuda.syncthreads()", "    half //= 2"]
    lines += [f"{a} = {s}[0]" for a, s in zip(accs, shared)]
    lines += ["cuda.syncthreads()"]
    return lines


def max_sum_exp(at: str, size: str, var: str) -> list[str]:
    """Lines computing ``m``, the maximum of the row ``at`` (``{var}`` its index, below
    ``size``), and ``total``, the sum of ``exp(row - m)`` (float64)."""
    first, each = at.format(**{var: "0"}), at.format(**{var: var})
    return [
        f"m = {first}",
        f"for {var} in range(1, {size}):",
        f"    m = max(m, {each})",
        "total = 0.0",
        f"for {var} in range({size}):",
        f"    total += math.exp({each} - m)",
    ]


# -- views ---------------------------------------------------------------------------------
def rows_view(ctx, value: Value, dim: int) -> tuple[int, int, int]:
    """``value``'s shape as ``(outer, D, inner)`` around axis ``dim``."""
    shape = ctx.shape(value) if value.type.rank else (1,)
    axis = dim % len(shape)
    outer = inner = 1
    for d in shape[:axis]:
        outer *= d
    for d in shape[axis + 1 :]:
        inner *= d
    return outer, shape[axis], inner
