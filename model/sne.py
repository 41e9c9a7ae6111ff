"""SNE, the Set-based Neural Network Encoder (Andreis, Bedionita, Hwang), statistics-aware, over packed batches.

    chunk_encoder    elements of a chunk -> chunk vector        SAB stack + PMA   (c elements: small sets)
    part_encoder     chunks of a part    -> part vector         ISAB stack + PMA  (linear in the chunk count)
      + stats_proj   exact statistics of ALL the part's values  -> added to the part vector
    layer_encoder    parts of a layer    -> layer vector        SAB stack + PMA   (weight, bias)
      + pair_proj    the layer's weight against the previous one (`model.pairs`) -> added to the layer vector
    network_encoder  layers              -> network embedding   SAB stack + PMA   (layers are few)
      + count_proj   log of the layer count (`layer_count`)  -> added to the network embedding
    accuracy_head / gap_head             -> logits
    SNEEnsemble      `cfg.members` SNEs from different seeds   -> logits averaged, embeddings concatenated

The chunk encoder sees weights standardised per part (`Chunks.values` are divided by the part's std); the
scale and shape of the whole part arrive through its statistics (`model.stats`). `use_chunks`/`use_stats`
switch either path off for the ablation. The paper's eq. 6 adds the type and level encodings to the chunk
vectors; here they are added once per part, which is the same information at a part's cost.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.blocks import SetStack, segment_apply, sinusoid
from model.config import SNEConfig
from model.packing import PackedBatch
from model.pairs import N_PAIR
from model.stats import N_STATS, relative_view

STATS_CLAMP = 8.0  # standardised statistics are clipped to +-this: far-off checkpoints stay finite


def type_encoding(type_ids: torch.Tensor, dim: int) -> torch.Tensor:
    """Part-type encoding: a sinusoid of another base, so type a + level b differs from type b + level a."""
    return sinusoid(type_ids, dim, base=100.0)


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

    stats_shift: torch.Tensor  # [N_STATS] buffers, set by fit_stats
    stats_scale: torch.Tensor
    stats_edges: torch.Tensor  # [N_STATS, bins + 1] with stats_encoding="ple"

    def __init__(self, cfg: SNEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        h, nh, ln = cfg.hidden, cfg.heads, cfg.layer_norm
        if cfg.use_chunks:
            self.chunk_encoder = SetStack(1, h, h, cfg.sab_blocks, nh, ln)
            self.part_encoder = SetStack(h, h, h, cfg.isab_blocks, nh, ln, inducing=cfg.inducing)
        if cfg.use_stats:
            # statistics + relative depth -> part token; standardised with the training set's moments, or
            # piecewise-linear over its quantile bins (each statistic -> `stats_bins` numbers in [0, 1])
            n_in = N_STATS * (cfg.stats_bins if cfg.stats_encoding == "ple" else 1)
            self.stats_proj = nn.Sequential(nn.Linear(n_in + 1, h), nn.ReLU(), nn.Linear(h, h))
            self.register_buffer("stats_shift", torch.zeros(N_STATS))
            self.register_buffer("stats_scale", torch.ones(N_STATS))
            if cfg.stats_encoding == "ple":
                self.register_buffer("stats_edges", torch.linspace(-1, 1, cfg.stats_bins + 1).repeat(N_STATS, 1))
        if cfg.pair_stats:  # how the layer's weight lines up with the previous one -> added to the layer vector
            self.pair_proj = nn.Sequential(nn.Linear(N_PAIR, h), nn.ReLU(), nn.Linear(h, h))
        self.layer_encoder = SetStack(h, h, h, cfg.sab_blocks, nh, ln)
        self.network_encoder = SetStack(h, h, cfg.encoding, cfg.sab_blocks, nh, ln)
        if cfg.layer_count:  # the network pool is an attention-weighted mean: it cannot tell 4 layers from 8
            self.count_proj = nn.Linear(1, cfg.encoding)
        hh = cfg.head_hidden
        self.accuracy_head = nn.Sequential(
            nn.Linear(cfg.encoding, hh), nn.ReLU(), nn.Linear(hh, hh), nn.ReLU(), nn.Linear(hh, 1)
        )  # Table 8; the sigmoid is applied by SNEOutput.accuracy / BCE-with-logits
        self.gap_head = nn.Sequential(nn.Linear(cfg.encoding, hh), nn.ReLU(), nn.Linear(hh, 1))

    def view_stats(self, part_stats: torch.Tensor) -> torch.Tensor:
        """The statistics as this model reads them (`cfg.stats_view`), before standardising."""
        return relative_view(part_stats) if self.cfg.stats_view == "relative" else part_stats

    @torch.no_grad()
    def fit_stats(self, part_stats: torch.Tensor) -> None:
        """Standardise statistics with the moments of the training parts `[P, N_STATS]` (saved as buffers)."""
        if self.cfg.use_stats:
            part_stats = self.view_stats(part_stats)
            self.stats_shift.copy_(part_stats.mean(0))
            self.stats_scale.copy_(part_stats.std(0).clamp_min(1e-3))
            if self.cfg.stats_encoding == "ple":
                q = torch.linspace(0, 1, self.cfg.stats_bins + 1, dtype=torch.float64)
                self.stats_edges.copy_(torch.quantile(part_stats.double(), q, dim=0).T)  # [S, bins + 1]

    def stats_features(self, part_stats: torch.Tensor) -> torch.Tensor:
        """`[P, S]` standardised statistics, or `[P, S * bins]` piecewise-linear codes (`stats_encoding`).

        A code is each bin's filled share: 1 below the value, 0 above it, the fraction in its own bin
        (Gorishniy et al. 2022, "On Embeddings for Numerical Features"). Trees are blind to a statistic's
        scale and skew; this gives the network the same view, and values beyond the training range saturate.
        """
        x = self.view_stats(part_stats)
        if self.cfg.stats_encoding != "ple":
            return ((x - self.stats_shift) / self.stats_scale).clamp(-STATS_CLAMP, STATS_CLAMP)
        lo, hi, x = self.stats_edges[:, :-1], self.stats_edges[:, 1:], x[:, :, None]
        ramp = ((x - lo) / (hi - lo).clamp_min(1e-12)).clamp(0.0, 1.0)
        return torch.where(hi > lo, ramp, (x >= hi).to(ramp.dtype)).flatten(1)  # [P, S * bins]; tied edges: steps

    def encode_chunks(self, batch: PackedBatch) -> torch.Tensor:
        """Chunk vectors `[N, hidden]`: each chunk is a set of its real values (exact-length groups, no padding)."""
        c = batch.values.shape[1]
        elements = batch.values.reshape(-1, 1)  # [N c, 1]
        start = torch.arange(batch.n_chunks, device=elements.device) * c  # [N]
        return segment_apply(lambda x, m, _: self.chunk_encoder(x, m), elements, start, batch.lengths, self.cfg.slice_tokens)

    def part_vectors(self, batch: PackedBatch) -> torch.Tensor:
        """`[P, hidden]` the chunk path of every part: chunk encoder, then part encoder over its chunks. A part's
        vector depends on its own chunks only, so the parts of a checkpoint may be encoded in pieces, as they
        are read (`model.overlap`), and handed to `forward`."""
        chunks = self.encode_chunks(batch)  # [N, h]
        return segment_apply(
            lambda x, m, _: self.part_encoder(x, m), chunks, batch.part_start, batch.part_len, self.cfg.slice_tokens
        )  # [P, h]

    def encode_parts(self, batch: PackedBatch, vectors: torch.Tensor | None = None) -> torch.Tensor:
        """Part tokens `[P, hidden]`: SNE part vector + statistics projection + type and level encodings."""
        h = self.cfg.hidden
        token = type_encoding(batch.part_type, h) + sinusoid(batch.part_level, h)  # [P, h]
        if self.cfg.use_chunks:
            token = token + (vectors if vectors is not None else self.part_vectors(batch))  # [P, h]
        if self.cfg.use_stats:
            z = self.stats_features(batch.part_stats)  # [P, S] or [P, S * bins]
            token = token + self.stats_proj(torch.cat([z, batch.part_depth[:, None]], -1))  # [P, h]
        return token

    def encode(self, batch: PackedBatch, vectors: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(network embeddings `[B, encoding]`, layer embeddings `[L, hidden]`); `vectors`: `part_vectors(batch)`
        when already computed."""
        st = self.cfg.slice_tokens
        parts = self.encode_parts(batch, vectors)  # [P, h]
        layers = segment_apply(lambda x, m, _: self.layer_encoder(x, m), parts, batch.layer_start, batch.layer_len, st)
        leveled = layers + sinusoid(batch.layer_level, layers.shape[-1])  # [L, h]
        if self.cfg.pair_stats:
            leveled = leveled + self.pair_proj(batch.layer_pair)  # [L, h]
        nets = segment_apply(
            lambda x, m, _: self.network_encoder(x, m), leveled, batch.ckpt_start, batch.ckpt_len, st
        )  # [B, encoding]
        if self.cfg.layer_count:
            nets = nets + self.count_proj(batch.ckpt_len.to(nets.dtype).log()[:, None])  # [B, encoding]
        return nets, layers

    def forward(self, batch: PackedBatch, vectors: torch.Tensor | None = None) -> SNEOutput:
        emb, layers = self.encode(batch, vectors)
        return SNEOutput(emb, layers, self.accuracy_head(emb).squeeze(-1), self.gap_head(emb).squeeze(-1))


class SNEEnsemble(nn.Module):
    """`cfg.members` SNEs trained from different seeds, read as one model: logits are averaged (on a zoo of a
    thousand checkpoints one SNE's ranking varies by +-0.02 tau from seed to seed; the mean varies less and
    ranks better), embeddings and layer embeddings are concatenated (each member's space kept intact)."""

    def __init__(self, cfg: SNEConfig, members: list[SNE] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.members = nn.ModuleList(members if members is not None else [SNE(cfg) for _ in range(cfg.members)])

    def sne_members(self) -> list[SNE]:
        return [m for m in self.members if isinstance(m, SNE)]

    @torch.no_grad()
    def fit_stats(self, part_stats: torch.Tensor) -> None:
        for m in self.sne_members():
            m.fit_stats(part_stats)

    def part_vectors(self, batch: PackedBatch) -> torch.Tensor:
        """`[members, P, hidden]`: each member's `SNE.part_vectors`."""
        return torch.stack([m.part_vectors(batch) for m in self.sne_members()])

    def forward(self, batch: PackedBatch, vectors: torch.Tensor | None = None) -> SNEOutput:
        members = self.sne_members()
        outs = [m(batch, None if vectors is None else vectors[k]) for k, m in enumerate(members)]
        return SNEOutput(
            torch.cat([o.embedding for o in outs], -1),  # [B, members * encoding]
            torch.cat([o.layer_embeddings for o in outs], -1),  # [L, members * hidden]
            torch.stack([o.logit for o in outs]).mean(0),  # [B]
            torch.stack([o.gap for o in outs]).mean(0),  # [B]
        )


Encoder = SNE | SNEEnsemble


def build_encoder(cfg: SNEConfig, seed: int | None = None) -> Encoder:
    """The model a config describes: one SNE, or an ensemble when `cfg.members > 1` (the weights' layout).
    With `seed`, member k is initialised from `seed + k`, so a member does not depend on how many there are."""
    members = []
    for k in range(cfg.members):
        if seed is not None:
            torch.manual_seed(seed + k)
        members.append(SNE(cfg))
    return members[0] if cfg.members == 1 else SNEEnsemble(cfg, members)
