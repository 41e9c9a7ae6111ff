"""How each weight lines up with the weight before it: statistics of a pair of consecutive layers.

Training aligns consecutive layers. The directions a layer writes (the Gram matrix `M = A A^T` of its output
units) and the directions the next layer reads (the Gram `N` of its input channels, summed over its output
units and kernel positions) are independent at initialisation and become correlated as the network learns.
Permuting the hidden units between the two layers conjugates both Grams by the same permutation, so their
similarity is invariant to it; it is dimensionless, and it is defined for any architecture whose consecutive
shapes connect (out of one = in of the next). Per-part statistics cannot see it: it lives between two layers.

On the held-out families a GBM over the pooled layer statistics ranked every checkpoint at mean tau 0.458
without these and 0.508 with them (`scripts/pair_checks.py`, docs/predictor-history.md, "Pair statistics").

Cost: a Gram of at most `MAX_UNITS` units, `units^2 x fan` multiply-adds, only for weights whose neighbour in
depth order connects; wider layers get no pair (`pair_present` 0), so the cost is bounded whatever the checkpoint
(ResNet-18's read 0.21 -> 0.29 s in `benchmarks/pairs.py`; nothing for a 1.1 B Llama, whose connected widths are
all 2,048).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

PAIR_NAMES: tuple[str, ...] = ("pair_gram_align", "pair_log_gain", "pair_present")
N_PAIR = len(PAIR_NAMES)
MAX_UNITS = 256  # Grams of at most this many units: 256^2 x fan multiply-adds, 0.5 MB in float64
MAX_ELEMS = 1 << 24  # and of weights of at most this many values (the statistics' held-part bound)
BLOCK_ELEMS = 1 << 18  # values converted to float32 at a time
_CLAMP = 8.0


def _eligible(t: torch.Tensor, units: int) -> bool:
    return t.ndim >= 2 and 2 <= units <= MAX_UNITS and t.numel() <= MAX_ELEMS and t.is_floating_point()


def _block(view: torch.Tensor) -> torch.Tensor:
    """A private contiguous float32 copy of `view`: BLAS picks its kernel (and so its rounding) by the operand's
    strides and alignment, and a weight read from a mapped file, from bytes or from a state dict differs in
    both, so every path multiplies fresh allocations of one layout and gets the same bits."""
    return torch.empty(view.shape, dtype=torch.float32).copy_(view)


def out_gram(t: torch.Tensor) -> torch.Tensor | None:
    """`[out, out]` float64 Gram of the output units (`W.reshape(out, -1)` times its transpose), or None where
    the weight is a vector, has one unit or more than `MAX_UNITS`."""
    if not _eligible(t, t.shape[0] if t.ndim else 0):
        return None
    a = t.detach().reshape(t.shape[0], -1)
    cols = max(1, BLOCK_ELEMS // a.shape[0])
    g = torch.zeros(a.shape[0], a.shape[0], dtype=torch.float64)
    for c0 in range(0, a.shape[1], cols):
        blk = _block(a[:, c0 : c0 + cols])  # [out, cols]
        g += (blk @ blk.T).double()  # float32 products over one block (2x faster), float64 sums across blocks
    return g


def in_gram(t: torch.Tensor) -> torch.Tensor | None:
    """`[in, in]` float64 Gram of the input channels (dim 1), summed over output units and kernel positions."""
    if not _eligible(t, t.shape[1] if t.ndim >= 2 else 0):
        return None
    c = t.shape[1]
    w = t.detach().reshape(t.shape[0], c, -1)  # [out, in, k]
    rows = max(1, BLOCK_ELEMS // (c * w.shape[2]))
    g = torch.zeros(c, c, dtype=torch.float64)
    for r0 in range(0, w.shape[0], rows):
        blk = _block(w[r0 : r0 + rows].transpose(0, 1)).reshape(c, -1)  # [in, rows * k], a view of the one copy
        g += (blk @ blk.T).double()
    return g


def pair_stats(m: torch.Tensor | None, n: torch.Tensor | None) -> torch.Tensor:
    """`[N_PAIR]` float32: the previous weight's output Gram `m` against this weight's input Gram `n`.

    - `pair_gram_align`: cosine of their off-diagonal parts (about 0 for independent layers, whatever the
      widths; the diagonals are the unit norms, similar for any two layers, and would swamp it);
    - `pair_log_gain`: `log ||W_b W_a||_F - log(||W_a||_F ||W_b||_F / sqrt(units))`, how much more the
      product keeps than two independent random matrices would (about 0 for them);
    - `pair_present`: 1 where both Grams exist and have the same size, else all three are 0.
    """
    if m is None or n is None or m.shape != n.shape:
        return torch.zeros(N_PAIR, dtype=torch.float32)
    units = m.shape[0]
    off = ~torch.eye(units, dtype=torch.bool)
    mo, no = m[off], n[off]
    denom = float(mo.norm() * no.norm())
    align = float((mo * no).sum()) / denom if denom > 0 and math.isfinite(denom) else 0.0
    inner, tm, tn = float((m * n).sum()), float(m.trace()), float(n.trace())
    gain = 0.5 * (math.log(inner) - math.log(tm) - math.log(tn) + math.log(units)) if min(inner, tm, tn) > 0 else 0.0
    vals = [align, gain, 1.0]
    return torch.tensor([min(max(v, -_CLAMP), _CLAMP) if math.isfinite(v) else 0.0 for v in vals], dtype=torch.float32)


def feeds_next(shapes: Sequence[Sequence[int] | None]) -> list[bool]:
    """For each layer's weight shape in depth order (None: no weight), whether the next matrix weight reads its
    outputs (its dim 1 equals this one's dim 0): only those weights need an output Gram. Vectors are skipped."""
    out = [False] * len(shapes)
    nxt: Sequence[int] | None = None
    for i in range(len(shapes) - 1, -1, -1):
        shape = shapes[i]
        if shape is None or len(shape) < 2:
            continue
        out[i] = nxt is not None and nxt[1] == shape[0]
        nxt = shape
    return out


class PairTracker:
    """Walks a checkpoint's weights in depth order, holding only the last weight's output Gram: each weight's
    pair statistics are those against the weight before it (vectors such as norms and biases are skipped).
    The layers' shapes come first (from the header), so a Gram is computed only where the next weight uses it."""

    def __init__(self, shapes: Sequence[Sequence[int] | None]) -> None:
        self._feeds = feeds_next(shapes)
        self._prev: torch.Tensor | None = None

    def step(self, index: int, weight: torch.Tensor) -> torch.Tensor:
        """`[N_PAIR]` for layer `index`'s `weight` against the previous weight; then it becomes the previous one."""
        if weight.ndim < 2:
            return torch.zeros(N_PAIR, dtype=torch.float32)
        n = in_gram(weight) if self._prev is not None and weight.shape[1] == self._prev.shape[0] else None
        out = pair_stats(self._prev, n)
        self._prev = out_gram(weight) if self._feeds[index] else None
        return out
