"""Winograd minimal filtering F(m x m, r x r) for stride-1 convolutions (Lavin & Gray, 2015).

An m x m output tile of an r x r convolution is ``A^T [(G g G^T) * (B^T d B)] A`` for the
a x a input tile ``d`` at the same place (a = m + r - 1): a^2 multiplications instead of
m^2 r^2. Over a whole image the elementwise products become a^2 GEMMs, one per position
``e`` of the transformed tile: ``M[e] = U[e] @ V[e]`` with ``U[e]`` [O, C] (the transformed
weights, computed once per call) and ``V[e]`` [C, tiles] (the transformed input of one
image). The output lands in the same ``[O, ho*wo]`` rows as the im2col GEMM's, so the
generated epilogue (bias, batch norm, activations, pooling) reads it unchanged.

The matrices come from Toom-Cook interpolation at the points 0, 1, -1, 2, -2, ... and
infinity (:func:`matrices`, exact fractions), and each variant's transforms are generated
with the matrices written out as sums of scalars (:func:`variant_source`): no a x a matrix
product runs per tile, and zero or unit coefficients cost nothing. ``TILES`` says which
output tile each kernel size uses; F(2x2, 3x3) (16 products for 36) and F(2x2, 5x5) (36
for 100) keep float32 within the agreement tests' tolerances (docs/performance.md).
"""

from __future__ import annotations

from fractions import Fraction
from types import ModuleType

from convforge.backends import cache

#: kernel size r -> output tile m of the F(m x m, r x r) variant a convolution runs
TILES = {3: 2, 5: 2}

#: the interpolation points, in the order they are taken (infinity is always the last)
POINTS = (Fraction(0), Fraction(1), Fraction(-1), Fraction(2), Fraction(-2), Fraction(1, 2), Fraction(-1, 2))

#: extra elements per row of V and M: with rows of exactly P elements the planes often
#: lie a multiple of 4 KiB apart, the transforms' store (or load) streams then share one
#: L1 set and the input transform ran 11x slower (VGG's 32x32 layer: 0.47 -> 0.043 ms/image)
ROW_PAD = 8

#: GEMM columns gathered from several images when one image has fewer tiles. Measured on
#: the forward (1 thread, 32 images, F(2x2, 3x3)): 128 -> 128 at 8x8 (16 tiles an image)
#: 11.6 ms one image per GEMM, 10.2 ms four, 12.1 ms sixteen (V outgrows the cache);
#: 64 -> 64 at 16x16: 9.3 ms one, 9.1 ms four, 11.7 ms sixteen
GROUP_COLUMNS = 64

Matrix = list[list[Fraction]]


def matrices(m: int, r: int) -> tuple[Matrix, Matrix, Matrix]:
    """(A^T [m x a], G [a x r], B^T [a x a]) of F(m, r), a = m + r - 1, such that the
    correlation ``y[i] = sum_k g[k] d[i + k]`` is ``A^T ((G g) * (B^T d))``.

    Toom-Cook: the linear convolution s = h * g of lengths m and r is ``C ((E_m h) * (E_r
    g))`` with E_k the evaluations at the points (infinity: the leading coefficient) and C
    the interpolation; the correlation is its transpose in h, so A^T = E_m^T, G = E_r and
    B^T = C^T. Column j of C is the coefficients of prod_{l != j} (x - p_l) / f_j (f_j that
    product at p_j); the 1 / f_j moves into G, so B^T is integral up to the points +-2.
    """
    a = m + r - 1
    if not 2 <= a <= len(POINTS) + 1:
        raise ValueError(f"F({m}, {r}) needs {a} interpolation points: at most {len(POINTS) + 1}")
    finite = POINTS[: a - 1]

    def poly(roots) -> list[Fraction]:  # coefficients, lowest first, of prod (x - root)
        c = [Fraction(1)]
        for root in roots:
            c = [(c[i - 1] if i else 0) - root * (c[i] if i < len(c) else 0) for i in range(len(c) + 1)]
        return c

    at = [[p**i for p in finite] + [Fraction(int(i == m - 1))] for i in range(m)]
    g, bt = [], []
    for j, p in enumerate(finite):
        others = finite[:j] + finite[j + 1 :]
        f = Fraction(1)
        for q in others:
            f *= p - q
        sign = 1 if f > 0 else -1  # B^T's row and G's row both negated: the product is the same
        bt.append([sign * c for c in poly(others)] + [Fraction(0)])
        g.append([sign * p**k / f for k in range(r)])
    bt.append(poly(finite))
    g.append([Fraction(int(k == r - 1)) for k in range(r)])
    return at, g, bt


# -- source generation ------------------------------------------------------------------
class _Constants:
    """The non-unit coefficient magnitudes an expression uses, bound once per function as
    ``k<i> = dt(value)`` (a bare float literal would promote float32 arithmetic to float64)."""

    def __init__(self, dtype: str | None) -> None:
        self.dtype = dtype
        self.names: dict[Fraction, str] = {}

    def __call__(self, value: Fraction) -> str:
        if self.dtype is None:  # float64 arithmetic: the literal itself
            return repr(float(value))
        return self.names.setdefault(value, f"k{len(self.names)}")

    def lines(self, indent: int) -> list[str]:
        pad = " " * indent
        return [f"{pad}{name} = {self.dtype}({float(v)!r})" for v, name in self.names.items()]


def _sum(coeffs, names, constants: _Constants) -> str:
    """``sum coeffs[i] * names[i]`` written with adds and subtracts (zero terms dropped, a
    magnitude all terms share factored out)."""
    terms = [(c, name) for c, name in zip(coeffs, names, strict=True) if c != 0]
    if not terms:
        return "zero"
    common = {abs(Fraction(c)) for c, _ in terms}
    scale = common.pop() if len(common) == 1 and len(terms) > 1 else Fraction(1)
    text = ""
    for c, name in terms:
        mag = abs(Fraction(c)) / scale
        term = name if mag == 1 else f"{constants(mag)} * {name}"
        if not text:
            text = f"-{term}" if c < 0 else term
        else:
            text += f" - {term}" if c < 0 else f" + {term}"
    return text if scale == 1 else f"{constants(scale)} * ({text})"


def _at(p: int, q: int, pitch: str) -> str:
    """``+ p * pitch + q`` (zeros dropped): the offset of row p, column q of a tile."""
    text = "" if p == 0 else f" + {pitch}" if p == 1 else f" + {p} * {pitch}"
    return text + (f" + {q}" if q else "")


def _function(signature: str, constants: _Constants, body: list[str], *, typed_by: str = "") -> str:
    """An njit function: ``dt`` (the dtype of argument ``typed_by``) and the constants
    bound first."""
    head = [f"@njit(cache=True)\ndef {signature}:"]
    if typed_by:
        head.append(f"    dt = {typed_by}.dtype.type")
    head += constants.lines(4)
    return "\n".join(head + body) + "\n"


def variant_source(m: int, r: int) -> str:
    """Source of the module of F(m x m, r x r): ``tile_counts``, ``transformed_weights``,
    ``weight_transform_rows``, ``winograd_buffers``, ``group_size``, ``input_transform``,
    ``output_transform``, ``image_tiles``, ``group_products``, ``image_rows``,
    ``winograd_tiles`` (the forward: a group of images' tiles share the GEMMs) and
    ``output_transform_adjoint``, ``image_adjoint``, ``group_weight_products``,
    ``weight_grad_tiles``, ``weight_grad_from_parts`` (the weight gradient; ``winograd_tiles``
    and ``weight_grad_tiles`` are the one-image forms, which kernels do not bind), with ``M``,
    ``R``, ``ALPHA`` and ``T = ALPHA**2`` (the GEMMs per group)."""
    at, g, bt = matrices(m, r)
    a = m + r - 1
    rng_a, rng_m, rng_r = range(a), range(m), range(r)
    parts = [
        f"# Winograd F({m}x{m}, {r}x{r}), generated by convforge.backends.numba_cpu.kernels.winograd",
        "import numpy as np",
        "from numba import njit",
        "",
        "from convforge.backends.numba_cpu.kernels.blas import gemm",
        "",
        f"M = {m}\nR = {r}\nALPHA = {a}\nT = {a * a}\nROW_PAD = {ROW_PAD}\nGROUP_COLUMNS = {GROUP_COLUMNS}",
        "",
        f"""
@njit(cache=True)
def tile_counts(ho, wo):
    return (ho + {m - 1}) // {m}, (wo + {m - 1}) // {m}


@njit(cache=True)
def transformed_weights(O, C, like):
    # allocated outside the parallel kernel's body
    return np.empty(({a * a}, O, C), dtype=like.dtype)


@njit(cache=True)
def winograd_buffers(C, O, ho, wo, images, like):
    # (padded image [C, m*th + r-1, m*tw + r-1], V [T, C, images*P], M [T, O, images*P],
    # rows r [O, ho*wo]) for groups of up to `images` images per GEMM; V and M are views of
    # rows ROW_PAD longer
    th, tw = tile_counts(ho, wo)
    P = th * tw * images
    xp = np.empty((C, {m} * th + {r - 1}, {m} * tw + {r - 1}), dtype=like.dtype)
    v = np.empty(({a * a}, C, P + ROW_PAD), dtype=like.dtype)[:, :, :P]
    m = np.empty(({a * a}, O, P + ROW_PAD), dtype=like.dtype)[:, :, :P]
    r = np.empty((O, ho * wo), dtype=like.dtype)
    return xp, v, m, r


@njit(cache=True)
def group_size(ho, wo, images):
    # images per GEMM, of the `images` a thread runs: one small image's GEMMs
    # ([O, C] @ [C, 16] at 8x8) run below BLAS's rate; past GROUP_COLUMNS columns V leaves the cache
    th, tw = tile_counts(ho, wo)
    return max(1, min(images, GROUP_COLUMNS // (th * tw)))


@njit(cache=True)
def image_tiles(xp, ho, wo, j, v):
    # the transformed tiles of the zero-padded image xp into image j's columns of v
    th, tw = tile_counts(ho, wo)
    P = th * tw
    input_transform(xp, th, tw, v[:, :, j * P : (j + 1) * P])


@njit(cache=True)
def group_products(u, v, k, ho, wo, m):
    # M[e] = U[e] @ V[e] over the columns of the group's first k images
    th, tw = tile_counts(ho, wo)
    cols = k * th * tw
    for e in range({a * a}):
        gemm(False, False, 1.0, u[e], v[e, :, :cols], 0.0, m[e, :, :cols])


@njit(cache=True)
def image_rows(m, j, ho, wo, r):
    # r [O, ho*wo] = image j's output rows from its columns of m
    th, tw = tile_counts(ho, wo)
    P = th * tw
    output_transform(m[:, :, j * P : (j + 1) * P], th, tw, ho, wo, r)


@njit(cache=True)
def winograd_tiles(xp, u, ho, wo, v, m, r):
    # r [O, ho*wo] = the stride-1 convolution of the zero-padded image xp from the
    # transformed weights u [T, O, C]
    image_tiles(xp, ho, wo, 0, v)
    group_products(u, v, 1, ho, wo, m)
    image_rows(m, 0, ho, wo, r)


@njit(cache=True)
def image_adjoint(gz, rw, ho, wo, j, m):
    # image j's columns of dM from its conv-output gradient gz [O, ho*rw]
    th, tw = tile_counts(ho, wo)
    P = th * tw
    output_transform_adjoint(gz, rw, th, tw, ho, wo, m[:, :, j * P : (j + 1) * P])


@njit(cache=True)
def group_weight_products(m, v, k, ho, wo, du):
    # du[e] += dM[e] @ V[e]^T over the columns of the group's first k images
    th, tw = tile_counts(ho, wo)
    cols = k * th * tw
    for e in range({a * a}):
        gemm(False, True, 1.0, m[e, :, :cols], v[e, :, :cols], 1.0, du[e])


@njit(cache=True)
def weight_grad_tiles(xp, gz, rw, ho, wo, v, m, du):
    # du[e] += dM[e] @ V[e]^T for one image: xp its zero-padded input (as the forward pads
    # it), gz [O, ho*rw] its conv-output gradient
    image_tiles(xp, ho, wo, 0, v)
    image_adjoint(gz, rw, ho, wo, 0, m)
    group_weight_products(m, v, 1, ho, wo, du)
""",
    ]

    # u[e, o, c] = (G g G^T)[e // a, e % a], in float64 (once per call: the rounding of
    # 1/6 or 1/24 in float32 would add to Winograd's error)
    k = _Constants(None)
    body = [
        "    C = w.shape[1]",
        "    for o in range(o0, o1):",
        "        for c in range(C):",
        "            wc = w[o, c]",
    ]
    body += [f"            g{i}_{j} = np.float64(wc[{i}, {j}])" for i in rng_r for j in rng_r]
    body += [
        f"            t{p}_{j} = {_sum(g[p], [f'g{i}_{j}' for i in rng_r], k)}" for p in rng_a for j in rng_r
    ]
    body += [
        f"            u[{p * a + q}, o, c] = {_sum(g[q], [f't{p}_{j}' for j in rng_r], k)}"
        for p in rng_a
        for q in rng_a
    ]
    parts.append(_function("weight_transform_rows(w, o0, o1, u)", k, body))

    # v[e, c, p] = (B^T d B)[e // a, e % a] for the a x a tile d of xp[c] at tile p; scalars,
    # not a scratch array: through an array LLVM cannot tell the scratch from v and keeps
    # every value in memory (4x slower at VGG's 32x32 layer)
    k = _Constants("dt")
    body = [
        "    C = xp.shape[0]",
        "    for c in range(C):",
        "        vc = v[:, c]",
        "        for ty in range(th):",
    ]
    body += [f"            r{i} = xp[c, {m} * ty{_at(0, i, '')}]" for i in rng_a]
    body += [
        "            base = ty * tw",
        "            for tx in range(tw):",
        f"                x0 = {m} * tx",
        "                p = base + tx",
    ]
    body += [f"                d{i}_{j} = r{i}[x0{_at(0, j, '')}]" for i in rng_a for j in rng_a]
    # B^T d: one transformed column per input column j; then (B^T d) B along each row
    body += [
        f"                s{p}_{j} = {_sum(bt[p], [f'd{i}_{j}' for i in rng_a], k)}"
        for p in rng_a
        for j in rng_a
    ]
    body += [
        f"                vc[{p * a + q}, p] = {_sum(bt[q], [f's{p}_{j}' for j in rng_a], k)}"
        for p in rng_a
        for q in rng_a
    ]
    parts.append(_function("input_transform(xp, th, tw, v)", k, body, typed_by="xp"))

    # r[o, y*wo + x] = (A^T m A) of tile p, cropped to the ho x wo output (ragged edges)
    k = _Constants("dt")
    body = [
        "    O = m.shape[1]",
        "    for o in range(O):",
        "        mo = m[:, o]",
        "        ro = r[o]",
        "        for ty in range(th):",
        f"            y = {m} * ty",
        "            for tx in range(tw):",
        "                p = ty * tw + tx",
        f"                x = {m} * tx",
        "                row = y * wo + x",
    ]
    body += [
        f"                s{p}_{j} = {_sum(at[p], [f'mo[{i * a + j}, p]' for i in rng_a], k)}"
        for p in rng_m
        for j in rng_a
    ]
    for p in rng_m:
        pad = " " * 16
        if p:
            body.append(f"{pad}if y + {p} < ho:")
            pad += "    "
        for q in rng_m:
            value = _sum(at[q], [f"s{p}_{j}" for j in rng_a], k)
            if q:
                body.append(f"{pad}if x + {q} < wo:")
                body.append(f"{pad}    ro[row{_at(p, q, 'wo')}] = {value}")
            else:
                body.append(f"{pad}ro[row{_at(p, q, 'wo')}] = {value}")
    parts.append(_function("output_transform(m, th, tw, ho, wo, r)", k, body, typed_by="m"))

    # dm[e, o, p] = (A dy A^T)[e // a, e % a] for the m x m tile dy of gz[o] (rows of pitch
    # rw) at tile p, zero outside the ho x wo output: the adjoint of output_transform
    k = _Constants("dt")
    body = [
        "    zero = dt(0)",
        "    for o in range(gz.shape[0]):",
        "        go = gz[o]",
        "        for ty in range(th):",
        f"            y = {m} * ty",
        "            for tx in range(tw):",
        f"                x = {m} * tx",
        "                p = ty * tw + tx",
        "                row = y * rw + x",
    ]
    for p in rng_m:
        for q in rng_m:
            inside = " and ".join(([f"y + {p} < ho"] if p else []) + ([f"x + {q} < wo"] if q else []))
            load = f"go[row{_at(p, q, 'rw')}]"
            body.append(f"                d{p}_{q} = {f'{load} if {inside} else zero' if inside else load}")
    body += [
        f"                t{i}_{q} = {_sum([at[p][i] for p in rng_m], [f'd{p}_{q}' for p in rng_m], k)}"
        for i in rng_a
        for q in rng_m
    ]
    body += [
        f"                dm[{i * a + j}, o, p] = "
        + _sum([at[q][j] for q in rng_m], [f"t{i}_{q}" for q in rng_m], k)
        for i in rng_a
        for j in rng_a
    ]
    parts.append(_function("output_transform_adjoint(gz, rw, th, tw, ho, wo, dm)", k, body, typed_by="gz"))

    # gw[o, c] = G^T (sum over chunks of du[:, :, o, c]) G: the adjoint of
    # weight_transform_rows, in float64
    k = _Constants(None)
    body = [
        "    O, C = gw.shape[0], gw.shape[1]",
        "    chunks = du.shape[0]",
        "    for o in range(O):",
        "        for c in range(C):",
    ]
    for e in range(a * a):
        body += [
            f"            u{e} = 0.0",
            "            for t in range(chunks):",
            f"                u{e} += du[t, {e}, o, c]",
        ]
    # G^T applied to each row of dU, then to each column of the result
    body += [
        f"            t{p}_{j} = {_sum([g[q][j] for q in rng_a], [f'u{p * a + q}' for q in rng_a], k)}"
        for p in rng_a
        for j in rng_r
    ]
    body += [
        f"            gw[o, c, {i}, {j}] = {_sum([g[p][i] for p in rng_a], [f't{p}_{j}' for p in rng_a], k)}"
        for i in rng_r
        for j in rng_r
    ]
    parts.append(_function("weight_grad_from_parts(du, gw)", k, body))
    return "\n\n".join(parts)


_VARIANTS: dict[tuple[int, int], ModuleType] = {}


def variant(m: int, r: int) -> ModuleType:
    """The compiled-on-first-call module of F(m x m, r x r) (:func:`variant_source`),
    written to the kernel cache once and shared by every kernel that runs it."""
    if (m, r) not in _VARIANTS:
        _VARIANTS[m, r] = cache.load_module(variant_source(m, r), prefix="winograd")
    return _VARIANTS[m, r]


#: what a generated kernel calls from its variant's module
_KERNEL_NAMES = (
    "group_products",
    "group_size",
    "group_weight_products",
    "image_adjoint",
    "image_rows",
    "image_tiles",
    "transformed_weights",
    "weight_grad_from_parts",
    "weight_transform_rows",
    "winograd_buffers",
)


def winograd_imports(r: int) -> str:
    """The lines of a generated kernel's source that bind the functions of the variant for
    r x r kernels (:func:`variant`) and its GEMM count ``WINOGRAD_T``."""
    lines = [
        "from convforge.backends.numba_cpu.kernels.winograd import variant",
        "",
        f"_winograd = variant({tile_size(r)}, {r})",
        "WINOGRAD_T = _winograd.T",
        *(f"{name} = _winograd.{name}" for name in _KERNEL_NAMES),
    ]
    return "\n".join(lines) + "\n"


def tile_size(r: int) -> int:
    """The output tile m of the variant an r x r convolution runs (``TILES``)."""
    return TILES[r]


def tile_counts(ho: int, wo: int, m: int) -> tuple[int, int]:
    """(tile rows, tile columns) of m x m output tiles covering an ho x wo output."""
    return -(-ho // m), -(-wo // m)
