"""Hidden-unit permutations derived from a checkpoint's own tensors, for LIR on any MLP or CNN.

Permuting the output units (channels) of one linear/conv layer, and the matching inputs of the next layer,
leaves the network's function unchanged when everything between them acts per unit: biases, activations,
pooling, dropout, and norm layers (BatchNorm/LayerNorm weight, bias and running statistics are permuted along).
A flatten from a conv to a linear layer keeps each channel's ``k`` features together (channel-major, as
PyTorch's ``flatten`` does), so the next layer's input ``c*k .. c*k+k-1`` moves with channel ``c``.

The plan is read from names and shapes alone: weight layers in depth order must form one chain whose shapes
connect (out of one = in of the next, or ``in = out * k`` at a conv-to-linear flatten). Where that does not
hold, or the names show structure a chain does not describe (attention, embeddings, residual shortcuts, a
block whose input and output widths match), no permutation is known to be safe: ``plan_permutations``
returns the reason instead of a plan, and LIR skips that checkpoint.

Limits: a state dict cannot show its forward pass. A residual add written in a flat module (``x + fc2(fc1(x))``
with ``fc1``/``fc2`` siblings of every other layer), a channel shuffle, or a flatten in channels-last order
would pass these checks and get a permutation that changes the function.
"""
from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from model.checkpoint import natural_key

__all__ = ["Hidden", "PermutationPlan", "permute_state", "plan_permutations"]

# name components that mean structure a chain of layers does not describe
_UNSAFE = re.compile(
    r"attn|attention|^(q|k|v|qkv|query|key|value|in_proj|out_proj|q_proj|k_proj|v_proj)$|embed|^(wte|wpe|token|pos)"
    r"|downsample|shortcut|skip|residual|^res$|gate|router|expert"
)
# heads come after the body whatever their name sorts as (``classifier`` < ``features`` alphabetically)
_HEADS = frozenset({"classifier", "head", "heads", "fc", "lm_head", "output", "out", "logits", "pred", "predictor"})
_NORM_LEAVES = ("weight", "bias", "running_mean", "running_var")


@dataclass(frozen=True)
class Hidden:
    """One hidden dimension: ``n`` units, the tensors whose ``dim`` indexes them directly, and the next
    layer's weight whose input dimension (1) holds them in blocks of ``k``."""

    n: int
    direct: tuple[str, ...]  # permuted along dim 0
    next_weight: str
    k: int


@dataclass(frozen=True)
class PermutationPlan:
    hidden: tuple[Hidden, ...]


@dataclass
class _Module:
    name: str
    tensors: dict[str, Tensor]

    @property
    def weight(self) -> Tensor | None:
        return self.tensors.get("weight")


def _order_key(name: str) -> tuple:
    return tuple((1 if c in _HEADS else 0, natural_key(c)) for c in name.split("."))


def _modules(state: Mapping[str, Tensor]) -> list[_Module] | str:
    mods: dict[str, _Module] = {}
    for key, t in state.items():
        prefix, _, leaf = key.rpartition(".")
        if not torch.is_floating_point(t) and leaf == "num_batches_tracked":
            continue
        if leaf not in ("weight", "bias", "running_mean", "running_var"):
            return f"tensor {key!r} is not a weight, bias or norm statistic"
        if any(_UNSAFE.search(c) for c in prefix.split(".")):
            return f"{key!r}: attention, embedding or residual structure"
        mods.setdefault(prefix, _Module(prefix, {})).tensors[leaf] = t
    return sorted(mods.values(), key=lambda m: _order_key(m.name))


def _residual_block(layers: list[_Module]) -> str | None:
    """A sub-module holding several layers whose input width equals its output width may be added to its input."""
    by_parent: dict[str, list[_Module]] = {}
    for m in layers:
        by_parent.setdefault(m.name.rpartition(".")[0], []).append(m)
    for parent, ms in by_parent.items():
        if len(ms) < 2 or len(ms) == len(layers):
            continue
        w0, w1 = ms[0].weight, ms[-1].weight
        assert w0 is not None and w1 is not None
        if w0.shape[1] == w1.shape[0]:
            return f"block {parent!r} maps {w0.shape[1]} units to {w1.shape[0]}: possibly residual"
    return None


def plan_permutations(state: Mapping[str, Tensor]) -> PermutationPlan | str:
    """The hidden dimensions of ``state`` that can be permuted without changing its function, or why none can."""
    mods = _modules(state)
    if isinstance(mods, str):
        return mods
    layers: list[_Module] = []
    norms: dict[str, list[str]] = {}  # layer name -> tensor keys of the norms that follow it
    for m in mods:
        w = m.weight
        if w is not None and w.dim() >= 2:
            if w.dim() > 5:
                return f"{m.name!r}: a {w.dim()}-D weight"
            layers.append(m)
            norms[m.name] = [f"{m.name}.bias"] if "bias" in m.tensors else []
            continue
        sizes = {t.shape for t in m.tensors.values()}
        if len(sizes) != 1 or len(next(iter(sizes))) != 1:
            return f"{m.name!r}: tensors of shapes {sorted(tuple(s) for s in sizes)} are neither a layer nor a norm"
        if not layers or layers[-1].tensors["weight"].shape[0] != next(iter(sizes))[0]:
            return f"norm {m.name!r} of {next(iter(sizes))[0]} units follows no layer of that width"
        norms[layers[-1].name] += [f"{m.name}.{leaf}" for leaf in _NORM_LEAVES if leaf in m.tensors]
    if len(layers) < 2:
        return "no hidden layer (fewer than two linear/conv layers)"
    if (why := _residual_block(layers)) is not None:
        return why
    hidden = []
    for cur, nxt in itertools.pairwise(layers):
        w, w_next = cur.tensors["weight"], nxt.tensors["weight"]
        n, n_in = w.shape[0], w_next.shape[1]
        if w.dim() == 2 and w_next.dim() > 2:
            return f"linear {cur.name!r} feeds conv {nxt.name!r}: a reshape between them"
        k = n_in // n if n_in % n == 0 and w.dim() > 2 and w_next.dim() == 2 else (1 if n_in == n else 0)
        if k == 0:
            return f"{cur.name!r} has {n} outputs but {nxt.name!r} takes {n_in} inputs: not one chain"
        hidden.append(Hidden(n, (f"{cur.name}.weight", *norms[cur.name]), f"{nxt.name}.weight", k))
    return PermutationPlan(tuple(hidden))


def permute_state(state: Mapping[str, Tensor], plan: PermutationPlan, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """A copy of ``state`` with every planned hidden dimension randomly permuted (same function).

    Tensors the plan does not touch are shared with the input, which is never modified."""
    out = dict(state)
    for h in plan.hidden:
        perm = torch.randperm(h.n, generator=generator)  # [n]
        for key in h.direct:
            out[key] = out[key].index_select(0, perm)
        cols = (perm[:, None] * h.k + torch.arange(h.k)[None, :]).reshape(-1)  # [n * k]
        out[h.next_weight] = out[h.next_weight].index_select(1, cols)
    return out
