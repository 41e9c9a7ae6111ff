"""Hidden-unit permutations of zoo checkpoints (for Logit Invariance Regularization).

Permuting the output channels/units of a hidden layer, and the matching input channels of the
next layer, gives a different weight vector that computes exactly the same function: the
activations, pools and dropout between two layers act per channel, and a flatten keeps each
channel's H*W features together (``ArchSpec.inputs_per_channel``). An SNE encoder should give
such networks the same output; these functions make the permuted copies.

Pure functions: the input dict is never modified; tensors a permutation does not touch are
shared with the input (not copied).
"""

from __future__ import annotations

import torch
from torch import Tensor

from model.zoo.archs import get_spec

__all__ = ["permute_hidden", "random_permute"]


def _check_perm(perm: Tensor, n: int, layer: int) -> Tensor:
    perm = torch.as_tensor(perm)
    if perm.dim() != 1 or perm.numel() != n or perm.is_floating_point():
        raise ValueError(f"layer {layer}: perm must be a 1-D integer tensor of length {n}")
    perm = perm.to(torch.long)
    if not torch.equal(torch.sort(perm).values, torch.arange(n)):
        raise ValueError(f"layer {layer}: perm is not a permutation of 0..{n - 1}")
    return perm


def permute_hidden(state: dict[str, Tensor], arch: str, layer: int, perm: Tensor) -> dict[str, Tensor]:
    """Permute the units of hidden layer ``layer`` (0-based index into the conv/linear chain).

    ``perm[i]`` is the old unit that becomes unit ``i``: the layer's weight rows (conv output
    channels) and bias entries are reordered, and so are the next layer's input channels; for
    a flatten boundary with ``k`` features per channel, channel ``c``'s block ``c*k..c*k+k-1``
    moves as a whole. The output layer (class logits) is rejected: permuting it would change
    which logit means which class.
    """
    spec = get_spec(arch)
    if not 0 <= layer < spec.n_hidden:
        raise ValueError(
            f"{spec.name}: layer {layer} is not a hidden layer (hidden layers are 0..{spec.n_hidden - 1}; "
            f"layer {len(spec.layers) - 1} is the output layer)"
        )
    cur, nxt = spec.layers[layer], spec.layers[layer + 1]
    w, b = state[cur.weight], state[cur.bias]
    n_units = w.shape[0]
    perm = _check_perm(perm, n_units, layer)
    k = spec.inputs_per_channel[layer]
    w_next = state[nxt.weight]
    if w_next.shape[1] != n_units * k:
        raise ValueError(
            f"{spec.name}: {nxt.weight} has {w_next.shape[1]} inputs, expected {n_units} channels x {k}"
        )
    cols = (perm[:, None] * k + torch.arange(k)[None, :]).reshape(-1)
    out = dict(state)
    out[cur.weight] = w.index_select(0, perm)
    out[cur.bias] = b.index_select(0, perm)
    out[nxt.weight] = w_next.index_select(1, cols)
    return out


def random_permute(state: dict[str, Tensor], arch: str, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """Permute every hidden layer with an independent random permutation (function unchanged)."""
    spec = get_spec(arch)
    out = dict(state)
    for layer in range(spec.n_hidden):
        n_units = out[spec.layers[layer].weight].shape[0]
        out = permute_hidden(out, arch, layer, torch.randperm(n_units, generator=generator))
    return out
