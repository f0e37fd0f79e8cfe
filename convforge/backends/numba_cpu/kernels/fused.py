"""Fusion nodes: one kernel per recognised region, else the region's ops run back to back.

Recognised regions (what ``convforge.passes.fuse`` builds):

* ``conv2d|conv1d|linear [-> batch_norm] [-> activation]* [-> max_pool2d|max_pool2d_argmax|avg_pool2d]``:
  one generated kernel; the epilogue runs on the GEMM output while it is in cache.
* ``activation_backward -> max_pool2d_backward_argmax``: the gradient is masked at the
  pooled position and scattered through the stored argmax in one pass.
* the same pair followed by the conv's ``conv2d_backward_weight`` [``reduce_sum`` (bias)]
  [``conv2d_backward_input``] (``fuse{conv_backward=true}``): one kernel rebuilds each
  image's conv-output gradient from the pooled one and runs both GEMMs on it.

Any other region is still correct: its ops are lowered one by one with temporaries.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from convforge.backends import epilogue
from convforge.backends.numba_cpu.kernels import LOWERINGS, conv, linear, lowering
from convforge.backends.numba_cpu.kernels.conv import scatter_pooled_grad
from convforge.backends.numba_cpu.kernels.pool import window
from convforge.errors import BackendError

PRODUCERS = ("conv2d", "conv1d", "linear")
POOLS = ("max_pool2d", "max_pool2d_argmax", "avg_pool2d")


def _source_exprs(region, node, ins: list[str], prev: str | None) -> list[str]:
    """Driver expressions for a region node's inputs (region inputs, or the previous output)."""
    index = {id(v): i for i, v in enumerate(region.inputs)}
    out = []
    for v in node.inputs:
        if id(v) in index:
            out.append(ins[index[id(v)]])
        elif prev is not None and v.producer is not None:
            out.append(prev)
        else:
            raise BackendError(f"fusion region input %{v.name} is neither a region input nor the chain value")
    return out


def match_forward(region):
    """(producer, bn, acts, pool) if the region is a fusable forward chain, else None."""
    nodes = list(region.nodes)
    if not nodes or nodes[0].op not in PRODUCERS:
        return None
    producer, rest = nodes[0], nodes[1:]
    bn = None
    if rest and rest[0].op == "batch_norm":
        bn, rest = rest[0], rest[1:]
    acts = []
    while rest and rest[0].op in epilogue.UNARY:
        acts.append(rest[0])
        rest = rest[1:]
    pool = None
    if rest and rest[0].op in POOLS and producer.op == "conv2d":
        pool, rest = rest[0], rest[1:]
        if pool.op != "avg_pool2d" and tuple(pool.attrs["dilation"]) != (1, 1):
            return None
        if pool.op == "avg_pool2d" and (
            any(pool.attrs["padding"])
            or pool.attrs["ceil_mode"]
            or pool.attrs["divisor_override"] is not None
        ):
            return None
    if rest:
        return None
    return producer, bn, acts, pool


@njit(cache=True, parallel=True)
def act_backward_max_pool_argmax(gy, y, am, kind, slope, kh, kw, sh, sw, ph, pw, gx):
    """gx = scatter(act'(y) * gy, argmax); ``kind`` as in :func:`conv.act_grad`.

    The activation is monotone, so its derivative at the window's maximum is a function
    of the pooled output ``y``: the full pre-pool activation is never stored.
    """
    for n in prange(gx.shape[0]):
        _scatter_image(gy, y, am, n, kind, slope, kh, kw, sh, sw, ph, pw, gx)


@njit(cache=True)
def _scatter_image(gy, y, am, n, kind, slope, kh, kw, sh, sw, ph, pw, gx):
    C, H, W = gx.shape[1], gx.shape[2], gx.shape[3]
    bias_sums = np.zeros(C, dtype=gx.dtype)  # a by-product this op does not need
    scatter_pooled_grad(
        gy, y, am, n, kind, slope, kh, kw, sh, sw, ph, pw, H, W, W, gx[n].reshape(C, H * W), bias_sums
    )


_ACT_KIND = {"relu_backward": 0, "leaky_relu_backward": 1, "sigmoid_backward": 2, "tanh_backward": 3}


def _emit_conv_backward(ctx, node, ins, outs) -> bool:
    """The region act_backward -> max_pool2d_backward_argmax -> conv gradients, if it is one."""
    region = node.region
    nodes = list(region.nodes)
    ops = [n.op for n in nodes]
    if (
        len(nodes) < 3
        or ops[0] not in _ACT_KIND
        or ops[1:3] != ["max_pool2d_backward_argmax", "conv2d_backward_weight"]
    ):
        return False
    act, pool, weight, *rest = nodes
    bias = rest.pop(0) if rest and rest[0].op == "reduce_sum" else None
    grad_in = rest.pop(0) if rest and rest[0].op == "conv2d_backward_input" else None
    if rest:
        return False
    gp, yp, am, x = ins[:4]
    by_out = dict(zip((id(v) for v in region.outputs), outs))
    gw = by_out[id(weight.outputs[0])]
    w = ins[4] if grad_in is not None else gw  # without an input gradient only w's shape is read
    dtype = weight.outputs[0].type.dtype
    gb = by_out[id(bias.outputs[0])] if bias is not None else ctx.zeros(0, dtype)
    gx = by_out[id(grad_in.outputs[0])] if grad_in is not None else ctx.dummy(4, dtype)
    gz = pool.outputs[0].type
    k = ctx.static(conv.conv2d_backward_fused, "conv2d_backward_fused")
    act_args = (_ACT_KIND[act.op], float(act.attrs.get("negative_slope", 0.0)))
    geometry = (*conv.conv_params(weight), gz.shape[2], gz.shape[3])
    pool_args = f"({window(pool.attrs)})"
    ctx.line(f"{k}({gp}, {yp}, {am}, {act_args}, {pool_args}, {x}, {w}, {geometry}, T, {gw}, {gb}, {gx})")
    return True


def _emit_backward(ctx, node, ins, outs) -> bool:
    region = node.region
    nodes = list(region.nodes)
    if len(nodes) == 2 and nodes[0].op in _ACT_KIND and nodes[1].op == "max_pool2d_backward_argmax":
        act, pool = nodes
        gy, s = _source_exprs(region, act, ins, None)
        _, am = _source_exprs(region, pool, ins, "chain")
        kind, slope = _ACT_KIND[act.op], float(act.attrs.get("negative_slope", 0.0))
    elif len(nodes) == 1 and nodes[0].op == "max_pool2d_backward_argmax":
        pool = nodes[0]
        gy, am = _source_exprs(region, pool, ins, None)
        s, kind, slope = gy, 4, 0.0
    else:
        return False
    if tuple(pool.attrs["dilation"]) != (1, 1):
        return False
    k = ctx.static(act_backward_max_pool_argmax, "act_backward_max_pool_argmax")
    ctx.line(f"{k}({gy}, {s}, {am}, {kind}, {slope!r}, {window(pool.attrs)}, {outs[0]})")
    return True


@lowering("fusion")
def _(ctx, node, ins, outs):
    region = node.region
    if region is None:
        raise BackendError(f"{node.describe()}: a fusion node without a region")
    matched = match_forward(region)
    if matched is not None:
        producer, bn, acts, pool = matched
        pins = _source_exprs(region, producer, ins, None)
        bn_args, eps = None, 0.0
        if bn is not None:
            bn_args = _source_exprs(region, bn, ins, "chain")[1:]
            eps = bn.attrs["eps"]
        act_list = [(a.op, dict(a.attrs)) for a in acts]
        b = pins[2] if len(pins) > 2 else None
        if producer.op == "linear":
            linear.emit_forward(ctx, node, pins[0], pins[1], b, bn_args, eps, act_list, outs[0])
        else:
            am = outs[1] if pool is not None and pool.op == "max_pool2d_argmax" else None
            conv.emit_forward(
                ctx, producer, pins[0], pins[1], b, bn_args, eps, act_list, pool, outs[0], am, node.outputs[0]
            )
        return
    if _emit_conv_backward(ctx, node, ins, outs) or _emit_backward(ctx, node, ins, outs):
        return
    _emit_sequence(ctx, node, ins, outs)


def _emit_sequence(ctx, node, ins, outs) -> None:
    """An unrecognised region: lower each of its ops, chaining through temporaries."""
    region = node.region
    prev = None
    last = region.nodes[-1]
    for rnode in region.nodes:
        if rnode.op not in LOWERINGS:
            raise BackendError(f"numba-cpu has no kernel for op {rnode.op!r} (in {node.describe()})")
        rins = _source_exprs(region, rnode, ins, prev)
        routs = outs if rnode is last else [ctx.temp(v) for v in rnode.outputs]
        LOWERINGS[rnode.op](ctx, rnode, rins, routs)
        prev = routs[0]


@njit(cache=True)
def bn_fold_weight(w, gamma, var, eps, out):
    """out[o, :] = w[o, :] * gamma[o] / sqrt(var[o] + eps) (w flattened to [O, K])."""
    for o in range(w.shape[0]):
        s = gamma[o] / np.sqrt(np.float64(var[o]) + eps)
        for k in range(w.shape[1]):
            out[o, k] = w[o, k] * s


@njit(cache=True)
def bn_fold_bias(gamma, beta, mean, var, bias, has_bias, eps, out):
    for o in range(gamma.shape[0]):
        s = gamma[o] / np.sqrt(np.float64(var[o]) + eps)
        b = bias[o] if has_bias else 0.0
        out[o] = (b - mean[o]) * s + beta[o]


@lowering("bn_fold_weight")
def _(ctx, node, ins, outs):
    k = ctx.static(bn_fold_weight, "bn_fold_weight")
    o = node.inputs[0].shape[0]
    eps = node.attrs["eps"]
    ctx.line(f"{k}({ins[0]}.reshape({o}, -1), {ins[1]}, {ins[2]}, {eps!r}, {outs[0]}.reshape({o}, -1))")


@lowering("bn_fold_bias")
def _(ctx, node, ins, outs):
    k = ctx.static(bn_fold_bias, "bn_fold_bias")
    bias = ins[4] if len(ins) > 4 else ins[0]
    ctx.line(f"{k}({', '.join(ins[:4])}, {bias}, {len(ins) > 4}, {node.attrs['eps']!r}, {outs[0]})")
