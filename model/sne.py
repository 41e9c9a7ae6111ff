"""SNE, the Set-based Neural Network Encoder (Andreis, Bedionita, Hwang), over packed batches.

Set Transformer blocks (MAB/SAB/PMA, eqs. 10-13) with `scaled_dot_product_attention` and key-padding masks;
the pipeline chunk -> part (weight or bias) -> layer -> network follows eqs. 6-9 and Appendix F.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from model.config import SNEConfig
from model.packing import PackedBatch


def sinusoid(pos: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Vaswani et al. encoding of integer positions, shape `[*pos.shape, dim]`."""
    half = dim // 2
    freq = torch.exp(-math.log(base) * torch.arange(half, device=pos.device, dtype=torch.float32) / max(half, 1))
    angle = pos.to(torch.float32)[..., None] * freq
    pe = torch.cat([angle.sin(), angle.cos()], -1)
    return F.pad(pe, (0, dim - 2 * half))


def type_encoding(type_ids: torch.Tensor, dim: int) -> torch.Tensor:
    """Layer-type encoding: a sinusoid of another base, so type a + level b differs from type b + level a."""
    return sinusoid(type_ids, dim, base=100.0)


class MAB(nn.Module):
    """Multihead attention block: H = LN(X + MH(X, Y, Y)); MAB = LN(H + rFF(H))."""

    def __init__(self, dim_q: int, dim_kv: int, dim: int, heads: int, ln: bool) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim_q, dim)
        self.kv = nn.Linear(dim_kv, 2 * dim)
        self.ff = nn.Linear(dim, dim)
        self.ln0 = nn.LayerNorm(dim) if ln else nn.Identity()
        self.ln1 = nn.LayerNorm(dim) if ln else nn.Identity()

    def forward(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        q = self.q(x)
        k, v = self.kv(y).chunk(2, dim=-1)
        b, n, d = q.shape
        split = lambda t: t.reshape(t.shape[0], t.shape[1], self.heads, d // self.heads).transpose(1, 2)
        attn_mask = None if mask is None else mask[:, None, None, :]
        a = F.scaled_dot_product_attention(split(q), split(k), split(v), attn_mask=attn_mask)
        h = self.ln0(q + a.transpose(1, 2).reshape(b, n, d))
        return self.ln1(h + F.relu(self.ff(h)))


class SABStack(nn.Module):
    """Set-to-set function Φ: a stack of SAB(X) = MAB(X, X)."""

    def __init__(self, dim_in: int, dim: int, cfg: SNEConfig) -> None:
        super().__init__()
        dims = [dim_in] + [dim] * cfg.sab_blocks
        self.blocks = nn.ModuleList(MAB(a, a, b, cfg.heads, cfg.layer_norm) for a, b in zip(dims, dims[1:]))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, x, mask)
        return x


class PMA(nn.Module):
    """Set-to-vector function Γ: PMA_1(X) = MAB(S, rFF(X)) with one learned seed."""

    def __init__(self, dim_in: int, dim: int, cfg: SNEConfig) -> None:
        super().__init__()
        self.seed = nn.Parameter(torch.empty(1, 1, dim))
        nn.init.xavier_uniform_(self.seed)
        self.rff = nn.Sequential(nn.Linear(dim_in, dim), nn.ReLU())
        self.mab = MAB(dim, dim, dim, cfg.heads, cfg.layer_norm)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.mab(self.seed.expand(x.shape[0], -1, -1), self.rff(x), mask).squeeze(1)


class ChunkEncoder(nn.Module):
    """Eq. 6: Γα[Φθ2(PosEnc_level(PosEnc_type(Φθ1(chunk))))]."""

    def __init__(self, cfg: SNEConfig) -> None:
        super().__init__()
        self.phi1 = SABStack(1, cfg.hidden, cfg)
        self.phi2 = SABStack(cfg.hidden, cfg.hidden, cfg)
        self.pool = PMA(cfg.hidden, cfg.hidden, cfg)
        self.scale = cfg.input_scale

    def forward(self, values: torch.Tensor, types: torch.Tensor, levels: torch.Tensor, mask=None) -> torch.Tensor:
        x = self.phi1(values[..., None] * self.scale, mask)
        d = x.shape[-1]
        x = x + (type_encoding(types, d) + sinusoid(levels, d))[:, None, :]
        return self.pool(self.phi2(x, mask), mask)


def segment_apply(
    fn: Callable[[torch.Tensor, torch.Tensor | None, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    start: torch.Tensor,
    length: torch.Tensor,
    slice_tokens: int,
) -> torch.Tensor:
    """Apply a set function to every contiguous segment `x[start:start+length]` of a packed tensor.

    Segments are bucketed by size (powers of two) and padded within a bucket with a key mask, so a segment's
    result does not depend on what else is in the batch; buckets are sliced to about `slice_tokens` elements.
    `fn(dense [S, n, d], mask [S, n] | None, segment_ids [S]) -> [S, d_out]`.
    """
    bucket = torch.where(length <= 1, length, 2 ** torch.ceil(torch.log2(length.float())).long())
    pieces, order = [], []
    for b in torch.unique(bucket).tolist():
        ids_all = (bucket == b).nonzero().squeeze(1)
        step = max(1, min(slice_tokens // b, (slice_tokens * 64) // (b * b)))
        for s in range(0, ids_all.shape[0], step):
            ids = ids_all[s : s + step]
            lens = length[ids]
            n = int(lens.max())
            offs = torch.arange(n, device=x.device)
            mask = offs[None, :] < lens[:, None]
            idx = torch.where(mask, start[ids, None] + offs[None, :], start[ids, None])
            pieces.append(fn(x[idx], None if bool(mask.all()) else mask, ids))
            order.append(ids)
    out = torch.cat(pieces)
    return out[torch.argsort(torch.cat(order))]


@dataclass
class SNEOutput:
    embedding: torch.Tensor  # [B, encoding] network embeddings
    layer_embeddings: torch.Tensor  # [L, hidden], rows of checkpoint b at ckpt_start[b]:+ckpt_len[b]
    logit: torch.Tensor  # [B] accuracy logit
    gap: torch.Tensor  # [B] predicted generalization gap

    @property
    def accuracy(self) -> torch.Tensor:
        return torch.sigmoid(self.logit)


class SNE(nn.Module):
    """Encoder + predictor heads; one forward encodes a whole packed batch of mixed architectures."""

    def __init__(self, cfg: SNEConfig) -> None:
        super().__init__()
        if cfg.hidden % cfg.heads or cfg.encoding % cfg.heads:
            raise ValueError("hidden and encoding must be divisible by heads")
        self.cfg = cfg
        h = cfg.hidden
        self.chunk_encoder = ChunkEncoder(cfg)
        self.layer_phi, self.layer_pool = SABStack(h, h, cfg), PMA(h, h, cfg)  # eq. 7
        self.part_phi, self.part_pool = SABStack(h, h, cfg), PMA(h, h, cfg)  # separated layer encoder
        self.net_phi, self.net_pool = SABStack(h, h, cfg), PMA(h, cfg.encoding, cfg)  # eq. 9
        hh = cfg.head_hidden
        self.head = nn.Sequential(
            nn.Linear(cfg.encoding, hh), nn.ReLU(), nn.Linear(hh, hh), nn.ReLU(), nn.Linear(hh, 1)
        )  # Table 8; the sigmoid is applied by SNEOutput.accuracy / BCE-with-logits
        self.gap_head = nn.Sequential(nn.Linear(cfg.encoding, hh), nn.ReLU(), nn.Linear(hh, 1))

    def encode_chunks(self, batch: PackedBatch) -> torch.Tensor:
        """Chunk vectors `[N, hidden]`, grouping chunks by real length so padding costs nothing."""
        out, order = [], []
        for n in torch.unique(batch.lengths).tolist():
            ids_all = (batch.lengths == n).nonzero().squeeze(1)
            step = max(1, self.cfg.slice_tokens // n)
            for s in range(0, ids_all.shape[0], step):
                ids = ids_all[s : s + step]
                out.append(self.chunk_encoder(batch.values[ids, :n], batch.chunk_type[ids], batch.chunk_level[ids]))
                order.append(ids)
        return torch.cat(out)[torch.argsort(torch.cat(order))]

    def encode(self, batch: PackedBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(network embeddings `[B, encoding]`, layer embeddings `[L, hidden]`)."""
        st = self.cfg.slice_tokens
        chunks = self.encode_chunks(batch)

        def part_fn(x, mask, ids):
            x = self.layer_phi(x, mask) + sinusoid(batch.part_level[ids], x.shape[-1])[:, None, :]
            return self.layer_pool(x, mask)

        parts = segment_apply(part_fn, chunks, batch.part_start, batch.part_len, st)
        layers = segment_apply(
            lambda x, m, ids: self.part_pool(self.part_phi(x, m), m), parts, batch.layer_start, batch.layer_len, st
        )
        leveled = layers + sinusoid(batch.layer_level, layers.shape[-1])
        nets = segment_apply(
            lambda x, m, ids: self.net_pool(self.net_phi(x, m), m), leveled, batch.ckpt_start, batch.ckpt_len, st
        )
        return nets, layers

    def forward(self, batch: PackedBatch) -> SNEOutput:
        emb, layers = self.encode(batch)
        return SNEOutput(emb, layers, self.head(emb).squeeze(-1), self.gap_head(emb).squeeze(-1))
