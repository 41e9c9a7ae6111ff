"""The statistics set model: per-layer statistics tokens -> two SABs -> PMA -> accuracy (issue 9's lead).

Each layer is one token (``model.evaluation.pooled.layer_tokens``: weight/bias statistics, spectral norm,
stable rank, log fan-in/out, relative depth) plus a learned embedding of its type; a Set Transformer
(Lee et al. 2019: two self-attention blocks, pooling by multi-head attention with one seed) reads the set
of a network's layers, whatever their number, and a small head predicts the accuracy (sigmoid, BCE).
Cheap to train (~60 epochs on one CPU core in about a minute on a thousand networks), and
architecture-agnostic like the pooled GBM: the baseline a statistics-aware SNE has to beat.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from numpy.typing import ArrayLike
from torch import Tensor, nn

from model.evaluation.pooled import TOKEN_NAMES, layer_tokens

__all__ = ["StatSetModel", "statset_fit_predict"]

_KIND = TOKEN_NAMES.index("kind")
_N_KINDS = 16


class MAB(nn.Module):
    """Multihead attention block: ``H = LN(X + MHA(X, Y)); out = LN(H + FF(H))`` (Set Transformer)."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q, self.kv, self.o = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, x: Tensor, y: Tensor, mask: Tensor) -> Tensor:
        b, n, d = x.shape
        h = self.heads
        q = self.q(x).view(b, n, h, d // h).transpose(1, 2)  # B x H x N x d/H
        k, v = (t.view(b, y.shape[1], h, d // h).transpose(1, 2) for t in self.kv(y).chunk(2, -1))  # B x H x M x d/H
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])  # B x H x N x d/H
        x = self.ln1(x + self.o(att.transpose(1, 2).reshape(b, n, d)))
        return self.ln2(x + self.ff(x))


class _StatSetNet(nn.Module):
    def __init__(self, n_features: int, hidden: int, heads: int) -> None:
        super().__init__()
        self.kind = nn.Embedding(_N_KINDS, 8)
        self.inp = nn.Sequential(nn.Linear(n_features + 8, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.sabs = nn.ModuleList([MAB(hidden, heads), MAB(hidden, heads)])
        self.seed = nn.Parameter(torch.randn(1, 1, hidden) * 0.1)
        self.pma = MAB(hidden, heads)
        self.head = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, x: Tensor, kind: Tensor, mask: Tensor) -> Tensor:
        """Logits ``[B]`` from tokens ``[B, L, F]``, layer kinds ``[B, L]`` and a validity mask ``[B, L]``."""
        h = self.inp(torch.cat([x, self.kind(kind)], -1))  # B x L x h
        for sab in self.sabs:
            h = sab(h, h, mask)
        pooled = self.pma(self.seed.expand(h.shape[0], -1, -1), h, mask)  # B x 1 x h
        return self.head(pooled[:, 0]).squeeze(-1)


class StatSetModel:
    """Fit/predict on lists of layer-token matrices (``[n_layers, len(TOKEN_NAMES)]`` per network).

    Numeric features are standardised with the training tokens' moments (NaN, e.g. no bias, becomes 0: the
    mean); Adam with cosine decay, a fixed number of epochs (no model selection on the test data). The global
    torch RNG is left untouched; set torch's thread count in the caller.
    """

    def __init__(
        self, hidden: int = 64, heads: int = 4, epochs: int = 60, lr: float = 2e-3, batch_size: int = 64,
        weight_decay: float = 1e-4, seed: int = 0,
    ) -> None:
        self.hidden, self.heads, self.epochs, self.lr = hidden, heads, epochs, lr
        self.batch_size, self.weight_decay, self.seed = batch_size, weight_decay, seed
        self.net: _StatSetNet | None = None
        self.mean_: np.ndarray | None = None
        self.scale_: np.ndarray | None = None

    def _batch(self, tokens: Sequence[np.ndarray]) -> tuple[Tensor, Tensor, Tensor]:
        assert self.mean_ is not None and self.scale_ is not None
        n, length = len(tokens), max(t.shape[0] for t in tokens)
        num = np.delete(np.arange(len(TOKEN_NAMES)), _KIND)
        x = np.zeros((n, length, num.size), dtype=np.float32)  # B x L x F
        kind = np.zeros((n, length), dtype=np.int64)  # B x L
        mask = np.zeros((n, length), dtype=bool)  # B x L
        for i, t in enumerate(tokens):
            z = (t[:, num] - self.mean_) / self.scale_
            x[i, : len(t)] = np.clip(np.nan_to_num(z, nan=0.0, posinf=10.0, neginf=-10.0), -10, 10)
            kind[i, : len(t)] = np.clip(np.nan_to_num(t[:, _KIND]), 0, _N_KINDS - 1).astype(np.int64)
            mask[i, : len(t)] = True
        return torch.from_numpy(x), torch.from_numpy(kind), torch.from_numpy(mask)

    def fit(self, tokens: Sequence[np.ndarray], y: ArrayLike) -> StatSetModel:
        """Fit on per-network token matrices and test accuracies in [0, 1]."""
        t = torch.as_tensor(np.asarray(y, dtype=np.float32)).reshape(-1)
        if len(tokens) != t.numel() or len(tokens) == 0:
            raise ValueError(f"got {len(tokens)} networks and {t.numel()} accuracies")
        num = np.delete(np.arange(len(TOKEN_NAMES)), _KIND)
        allt = np.concatenate(tokens)[:, num]
        self.mean_ = np.nan_to_num(np.nanmean(allt, 0)).astype(np.float32)
        sd = np.nan_to_num(np.nanstd(allt, 0))
        self.scale_ = np.where(sd > 1e-8, sd, 1.0).astype(np.float32)
        x, kind, mask = self._batch(tokens)
        gen = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = _StatSetNet(x.shape[-1], self.hidden, self.heads)
        opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        steps = self.epochs * -(-len(t) // self.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, self.lr, total_steps=max(steps, 1), pct_start=0.1)
        net.train()
        for _ in range(self.epochs):
            order = torch.randperm(len(t), generator=gen)
            for i in range(0, len(order), self.batch_size):
                b = order[i : i + self.batch_size]
                loss = F.binary_cross_entropy_with_logits(net(x[b], kind[b], mask[b]), t[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(net.parameters(), 1.0)
                opt.step()
                sched.step()
        self.net = net.eval()
        return self

    @torch.no_grad()
    def predict(self, tokens: Sequence[np.ndarray]) -> np.ndarray:
        """Predicted accuracy per network."""
        if self.net is None:
            raise RuntimeError("StatSetModel is not fitted; call fit() first")
        out = [torch.sigmoid(self.net(*self._batch(tokens[i : i + 256]))) for i in range(0, len(tokens), 256)]
        return torch.cat(out).numpy().astype(np.float64)


def statset_fit_predict(
    train_states: Sequence[Mapping[str, Tensor]], train_y: ArrayLike, test_states: Sequence[Mapping[str, Tensor]],
    seed: int = 0, **params: object,
) -> np.ndarray:
    """Fit the statistics set model on training checkpoints and predict test accuracies (any architectures)."""
    model = StatSetModel(seed=seed, **params).fit([layer_tokens(s) for s in train_states], train_y)  # type: ignore[arg-type]
    return model.predict([layer_tokens(s) for s in test_states])
