"""Direct convolution for stride-1 convolutions: generated register-blocked micro-kernels.

With few input channels an im2col GEMM is a thin product (K = C*kh*kw is 25 for LeNet's
conv1, 27 for a CIFAR network's first layer) that BLAS runs at a fraction of its rate,
and building the columns costs as much as multiplying them. The direct kernel reads the
zero-padded image in the stride-1 wide layout (row pitch ``Wp``, as ``im2col_wide``) and
accumulates a block of output channels at a time:

    r[o+b, q] += sum_j w[o+b, c, i, j] * xp[c].flat[i*dh*Wp + j*dw + q]      (b < BLOCK)

one loop over ``q in [0, ho*Wp)`` per (channel, kernel row), whose body is written out for
the kernel width: the ``BLOCK * kw`` weights stay in registers and each tap's input is
loaded once for ``BLOCK`` multiply-adds, so LLVM vectorises the loop over ``q`` with the
CPU's widest vectors (AVX-512 where the CPU has it, which OpenBLAS's sgemm may not use).
The ``Wp - wo`` extra columns per row are computed and ignored, as in the wide im2col.
The output rows have the im2col GEMM's layout, so the generated epilogue reads them.

Block width 4 measured best (8 spills registers: 32 -> 32 channels at 32x32, batch 64,
2 threads: 4.4 ms with 4, 7.1 ms with 8; im2col 10.4 ms, Winograd 8.1 ms). The loops are
compiled with ``fastmath={'contract'}`` and nothing else: multiply-adds become FMAs (the
same values to the last rounding or closer; 5-9 % faster per layer, docs/performance.md),
no reassociation.
"""

from __future__ import annotations

from numba import njit

#: output channels a micro-kernel accumulates at once
BLOCK = 4
#: the widest kernel the micro-kernels are written out for (BLOCK * kw weights in registers)
MAX_WIDTH = 7


@njit(cache=True)
def channel_blocks(O, tasks_per_image):
    """(blocks, channels per block) splitting O output channels into ``tasks_per_image``
    blocks, each a multiple of :data:`BLOCK` channels but the last."""
    per = (O + tasks_per_image - 1) // tasks_per_image
    per = max(BLOCK, (per + BLOCK - 1) // BLOCK * BLOCK)  # O = 0: no blocks, no division by 0
    return (O + per - 1) // per, per


def micro_kernel_source(kw: int, block: int) -> str:
    """Source of ``block{block}(xp, w, o0, kh, dh, dw, ho, r)``: rows o0 .. o0+block-1 of r
    from the padded image ``xp``, the kernel width ``kw`` written out."""
    lines = [
        # contract: LLVM may fuse each multiply-add into one FMA (rounded once, not twice)
        "@njit(cache=True, fastmath={'contract'})",
        f"def block{block}(xp, w, o0, kh, dh, dw, ho, r):",
        "    C = xp.shape[0]",
        "    Wp = xp.shape[2]",
        "    n_q = ho * Wp",
    ]
    # views bound once, indexed by the bare loop counter: no wraparound checks, so LLVM vectorises
    lines += [f"    r{b} = r[o0 + {b}]" for b in range(block)]
    lines += [f"    r{b}[:] = 0" for b in range(block)]
    lines += [
        "    for c in range(C):",
        "        flat = xp[c].reshape(-1)",
        "        for i in range(kh):",
        "            s = i * dh * Wp",
    ]
    lines += [f"            w{b}_{j} = w[o0 + {b}, c, i, {j}]" for b in range(block) for j in range(kw)]
    lines += [f"            x{j} = flat[s + {j} * dw : s + {j} * dw + n_q]" for j in range(kw)]
    lines.append("            for q in range(n_q):")
    lines += [f"                v{j} = x{j}[q]" for j in range(kw)]
    for b in range(block):
        terms = " + ".join(f"w{b}_{j} * v{j}" for j in range(kw))
        lines.append(f"                r{b}[q] += {terms}")
    return "\n".join(lines) + "\n"


def micro_kernels_source(kw: int) -> str:
    """The micro-kernels a direct forward kernel of width ``kw`` calls, ``direct_rows``, which
    runs them over output channels [o0, o1), and ``check_width``, which refuses weights of
    another width (the written-out taps would read past them)."""
    return (
        micro_kernel_source(kw, BLOCK)
        + "\n\n"
        + micro_kernel_source(kw, 1)
        + f"""

@njit(cache=True)
def check_width(w):
    # called before the parallel loop: an exception inside one does not propagate cleanly
    if w.shape[3] != {kw}:
        raise ValueError("direct convolution kernel compiled for another kernel width")


@njit(cache=True)
def direct_rows(xp, w, o0, o1, kh, dh, dw, ho, r):
    o = o0
    while o + {BLOCK} <= o1:
        block{BLOCK}(xp, w, o, kh, dh, dw, ho, r)
        o += {BLOCK}
    while o < o1:
        block1(xp, w, o, kh, dh, dw, ho, r)
        o += 1
"""
    )
