"""Set Transformer blocks (Lee et al. 2019, "Set Transformer", eqs. 5-11) and the packed-segment runner.

MAB(X, Y)  = LN(H + rFF(H)),  H = LN(X + Multihead(X, Y, Y))      attention of X over the set Y
SAB(X)     = MAB(X, X)                                               O(n^2): for small sets only
ISAB_m(X)  = MAB(X, MAB(I, X))   with m learned inducing points I    O(n m): linear in the set size
PMA_k(X)   = MAB(S, rFF(X))      with k learned seeds S              set -> k vectors

Attention runs on `F.scaled_dot_product_attention`; a key-padding mask `[S, n]` (True = real element) hides
padded set elements, so a set's result never depends on what it was padded with or batched beside.
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn


def sinusoid(pos: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Vaswani et al. encoding of integer positions, shape `[*pos.shape, dim]`."""
    half = dim // 2
    freq = torch.exp(-math.log(base) * torch.arange(half, device=pos.device, dtype=torch.float32) / max(half, 1))
    angle = pos.to(torch.float32)[..., None] * freq  # [*pos, half]
    pe = torch.cat([angle.sin(), angle.cos()], -1)  # [*pos, 2 half]
    return F.pad(pe, (0, dim - 2 * half))


class MAB(nn.Module):
    """Multihead attention block: H = LN(X + MH(X, Y, Y)); MAB = LN(H + rFF(H))."""

    def __init__(self, dim_q: int, dim_kv: int, dim: int, heads: int, ln: bool) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim_q, dim)
        self.kv = nn.Linear(dim_kv, 2 * dim)
        self.ff = nn.Linear(dim, dim)
        self.ln0 = nn.LayerNorm(dim) if ln else nn.Identity()
        self.ln1 = nn.LayerNorm(dim) if ln else nn.Identity()

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """`x [S, n, dq]` attends over `y [S, k, dkv]`; `mask [S, k]` marks real elements of `y`."""
        q = self.q(x)  # [S, n, d]
        k, v = self.kv(y).chunk(2, dim=-1)  # [S, k, d] each
        s, n, d = q.shape
        h = self.heads

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], h, d // h).transpose(1, 2)  # [S, h, len, d/h]

        attn_mask = None if mask is None else mask[:, None, None, :]  # [S, 1, 1, k]
        a = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=attn_mask)  # [S, h, n, d/h]
        hid = self.ln0(q + a.transpose(1, 2).reshape(s, n, d))  # [S, n, d]
        return self.ln1(hid + F.relu(self.ff(hid)))  # [S, n, d]


class SAB(nn.Module):
    """Set attention block SAB(X) = MAB(X, X): every element attends over the whole set."""

    def __init__(self, dim_in: int, dim: int, heads: int, ln: bool) -> None:
        super().__init__()
        self.mab = MAB(dim_in, dim_in, dim, heads, ln)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.mab(x, x, mask)  # [S, n, d]


class ISAB(nn.Module):
    """Induced set attention block: m inducing points summarise the set, the set attends over them."""

    def __init__(self, dim_in: int, dim: int, heads: int, ln: bool, inducing: int) -> None:
        super().__init__()
        self.inducing = nn.Parameter(torch.empty(1, inducing, dim))
        nn.init.xavier_uniform_(self.inducing)
        self.mab0 = MAB(dim, dim_in, dim, heads, ln)
        self.mab1 = MAB(dim_in, dim, dim, heads, ln)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        hid = self.mab0(self.inducing.expand(x.shape[0], -1, -1), x, mask)  # [S, m, d]: padded x masked out
        return self.mab1(x, hid)  # [S, n, d]; padded rows are garbage, hidden by the next mask


class PMA(nn.Module):
    """Pooling by multihead attention with one learned seed: PMA_1(X) = MAB(S, rFF(X)) -> one vector per set."""

    def __init__(self, dim_in: int, dim: int, heads: int, ln: bool) -> None:
        super().__init__()
        self.seed = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.xavier_uniform_(self.seed)
        self.rff = nn.Sequential(nn.Linear(dim_in, dim), nn.ReLU())
        self.mab = MAB(dim, dim, dim, heads, ln)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.mab(self.seed.expand(x.shape[0], -1, -1), self.rff(x), mask).squeeze(1)  # [S, d]


class SetStack(nn.Module):
    """Set -> set (a stack of SABs, or of ISABs when `inducing` > 0) -> vector (PMA)."""

    def __init__(self, dim_in: int, dim: int, dim_out: int, blocks: int, heads: int, ln: bool, inducing: int = 0) -> None:
        super().__init__()
        dims = [dim_in] + [dim] * blocks
        self.blocks = nn.ModuleList(
            ISAB(a, b, heads, ln, inducing) if inducing else SAB(a, b, heads, ln) for a, b in itertools.pairwise(dims)
        )
        self.pool = PMA(dim, dim_out, heads, ln)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, mask)  # [S, n, dim]
        return self.pool(x, mask)  # [S, dim_out]


SetFn = Callable[[torch.Tensor, "torch.Tensor | None", torch.Tensor], torch.Tensor]
EXACT_BELOW = 64  # segments up to this size are grouped by exact size (no padding at all)


def segment_apply(fn: SetFn, x: torch.Tensor, start: torch.Tensor, length: torch.Tensor, slice_tokens: int) -> torch.Tensor:
    """Apply a set function to every contiguous segment `x[start:start+length]` of a packed tensor `[T, d]`.

    Segments of up to `EXACT_BELOW` elements are grouped by exact size (chunks, parts, layers: no padding);
    longer ones are bucketed by powers of two and padded within a bucket under a key mask, so a segment's
    result does not depend on what else is in the batch. Each call holds about `slice_tokens` elements
    (fewer for long segments, whose attention is heavier). Empty segments are not allowed.
    `fn(dense [S, n, d], mask [S, n] | None, segment_ids [S]) -> [S, d_out]`; returns `[len(start), d_out]`.
    """
    if bool((length < 1).any()):
        raise ValueError("segment_apply: every segment needs at least one element")
    pow2 = 2 ** torch.ceil(torch.log2(length.float())).long()  # [G]
    bucket = torch.where(length <= EXACT_BELOW, length, pow2)  # [G]
    pieces, order = [], []
    for b in torch.unique(bucket).tolist():
        ids_all = (bucket == b).nonzero().squeeze(1)  # [G_b]
        step = max(1, min(slice_tokens // b, (slice_tokens * 64) // (b * b)))
        for s in range(0, ids_all.shape[0], step):
            ids = ids_all[s : s + step]  # [S]
            lens = length[ids]  # [S]
            n = int(lens.max())
            offs = torch.arange(n, device=x.device)  # [n]
            mask = offs[None, :] < lens[:, None]  # [S, n]
            idx = torch.where(mask, start[ids, None] + offs[None, :], start[ids, None])  # [S, n] padded -> 1st
            pieces.append(fn(x[idx], None if bool(mask.all()) else mask, ids))  # [S, d_out]
            order.append(ids)
    out = torch.cat(pieces)  # [G, d_out], bucket order
    return out[torch.argsort(torch.cat(order))]
