"""Zoo families beyond Arch1/Arch2: what users upload, in miniature (issue 9).

* ``mlp``: MLPs of varied depth and width on flattened images;
* ``resnet``: small CNNs with BatchNorm and residual blocks (a ResNet stem, basic blocks, global pool, head);
* ``transformer``: a small pre-norm transformer encoder over token sequences (``model.zoo.sequences``).

Each family has a few *variants* (depth/width); the index's ``arch`` column names the variant
(``mlp-d2-w32``) and the part before the first ``-`` is the family. State-dict keys are plain PyTorch names
(``layers.0.weight``, ``blocks.1.bn2.running_var``, ``head.weight``), so a variant's module loads its
checkpoints with ``load_state_dict(strict=True)``.

The zoo trains many models of one variant at once with a *batched forward* over stacked parameters
(``M x ...`` per key): convolutions as one grouped convolution (as in ``model.zoo.engine``), linear layers as
one ``baddbmm``/``einsum``, BatchNorm as one ``batch_norm`` over ``M*C`` channels (its running statistics
are the stacked buffers, updated in place), attention as one ``scaled_dot_product_attention`` over
``M*B`` sequences. Autograd of the summed per-model losses gives each model its own gradient. Each
module's own ``forward`` is this batched forward at ``M = 1``, so the two cannot drift apart.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.zoo.archs import ArchSpec, LayerSpec, make_activation

Params = dict[str, Tensor]
FAMILIES: tuple[str, ...] = ("mlp", "resnet", "transformer")


def _act(name: str) -> Callable[[Tensor], Tensor]:
    return make_activation(name)


def _drop(h: Tensor, rates: Tensor | None) -> Tensor:
    """Per-model dropout on ``M x ...`` activations (``rates`` (M,); None = eval mode / no dropout)."""
    if rates is None:
        return h
    keep = (1.0 - rates.to(h.dtype)).view(-1, *([1] * (h.dim() - 1)))
    return h * (torch.rand_like(h) < keep) / keep


def _linear(h: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """``M x ... x I`` @ per-model ``M x O x I`` weights + ``M x O`` bias -> ``M x ... x O``."""
    shape = h.shape
    flat = h.reshape(shape[0], -1, shape[-1])  # M x N x I
    out = torch.baddbmm(b.unsqueeze(1), flat, w.transpose(1, 2))  # M x N x O
    return out.reshape(*shape[:-1], w.shape[1])


def _per_model(x: Tensor, m: int, base_dim: int) -> Tensor:
    """Inputs as ``M x B x ...``: per-model inputs pass through, a shared batch is expanded (no copy)."""
    return x if x.dim() == base_dim + 1 else x.unsqueeze(0).expand(m, *x.shape)


def _n_models(p: Params) -> int:
    return next(iter(p.values())).shape[0]


# ---------------------------------------------------------------------------------------------- MLP


def mlp_forward(v: Variant, p: Params, bufs: Params, x: Tensor, rates: Tensor | None, training: bool) -> Tensor:
    """Logits ``M x B x K`` of stacked MLPs; ``x`` images ``[M x] B x C x H x W``."""
    m = _n_models(p)
    h = _per_model(x, m, 4)
    h = h.reshape(m, h.shape[1], -1)  # M x B x F
    act = _act(v.activation)
    for i in range(v.depth):
        h = _drop(act(_linear(h, p[f"layers.{i}.weight"], p[f"layers.{i}.bias"])), rates)
    return _linear(h, p["head.weight"], p["head.bias"])


class MLPNet(nn.Module):
    """``depth`` hidden linear layers of ``width`` units, then a linear head (keys ``layers.i``, ``head``)."""

    def __init__(self, v: Variant, in_features: int, n_classes: int) -> None:
        super().__init__()
        self.variant = v
        dims = [in_features] + [v.width] * v.depth
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in pairwise(dims))
        self.head = nn.Linear(dims[-1], n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return _single(self, mlp_forward, x)


# ------------------------------------------------------------------------------------------- ResNet


def _bn(h: Tensor, pre: str, p: Params, bufs: Params, training: bool) -> Tensor:
    """BatchNorm over the grouped layout ``B x (M*C) x H x W``: channel ``m*C + c`` is model m's channel c."""
    return F.batch_norm(
        h, bufs[f"{pre}.running_mean"].view(-1), bufs[f"{pre}.running_var"].view(-1),
        p[f"{pre}.weight"].reshape(-1), p[f"{pre}.bias"].reshape(-1), training, 0.1, 1e-5,
    )


def _conv(h: Tensor, w: Tensor, groups: int) -> Tensor:
    """3x3 'same' convolution of M stacked models (weights ``M x O x C x 3 x 3``) as one grouped conv."""
    return F.conv2d(h, w.reshape(-1, *w.shape[2:]), padding=1, groups=groups)


def _channel_drop(h: Tensor, rates: Tensor | None, m: int) -> Tensor:
    if rates is None:
        return h
    keep = (1.0 - rates.to(h.dtype)).repeat_interleave(h.shape[1] // m).view(1, -1, 1, 1)
    return h * (torch.rand_like(h) < keep) / keep


def resnet_forward(v: Variant, p: Params, bufs: Params, x: Tensor, rates: Tensor | None, training: bool) -> Tensor:
    """Logits ``M x B x K``: stem conv-BN-act, ``depth`` basic blocks, global average pool, linear head."""
    m = _n_models(p)
    if x.dim() == 5:  # per-model M x B x C x H x W -> B x (M*C) x H x W
        h, groups = x.transpose(0, 1).reshape(x.shape[1], -1, *x.shape[3:]), m
    else:  # shared input: every model's stem sees all C channels
        h, groups = x, 1
    act = _act(v.activation)
    h = act(_bn(_conv(h, p["stem.conv.weight"], groups), "stem.bn", p, bufs, training))
    for i in range(v.depth):
        pre = f"blocks.{i}"
        y = act(_bn(_conv(h, p[f"{pre}.conv1.weight"], m), f"{pre}.bn1", p, bufs, training))
        y = _channel_drop(y, rates, m)
        y = _bn(_conv(y, p[f"{pre}.conv2.weight"], m), f"{pre}.bn2", p, bufs, training)
        h = act(h + y)
    pooled = h.mean((2, 3)).reshape(h.shape[0], m, -1).transpose(0, 1)  # M x B x C
    return _linear(pooled, p["head.weight"], p["head.bias"])


class _ConvBN(nn.Module):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c_out)


class _Block(nn.Module):
    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)


class SmallResNet(nn.Module):
    """ResNet in miniature: stem conv3x3-BN-act, ``depth`` basic blocks of ``width`` channels, pool, head."""

    def __init__(self, v: Variant, in_channels: int, n_classes: int) -> None:
        super().__init__()
        self.variant = v
        self.stem = _ConvBN(in_channels, v.width)
        self.blocks = nn.ModuleList(_Block(v.width) for _ in range(v.depth))
        self.head = nn.Linear(v.width, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return _single(self, resnet_forward, x)


# -------------------------------------------------------------------------------------- Transformer


def _ln(h: Tensor, pre: str, p: Params) -> Tensor:
    """LayerNorm with per-model affine parameters (``M x d``) on ``M x B x L x d``."""
    w, b = p[f"{pre}.weight"], p[f"{pre}.bias"]
    return F.layer_norm(h, h.shape[-1:]) * w[:, None, None, :] + b[:, None, None, :]


def transformer_forward(v: Variant, p: Params, bufs: Params, x: Tensor, rates: Tensor | None, training: bool) -> Tensor:
    """Logits ``M x B x K`` of stacked pre-norm transformer encoders; ``x`` tokens ``[M x] B x L`` (int64)."""
    m = _n_models(p)
    tok = _per_model(x, m, 2)  # M x B x L
    b, length, d, heads = tok.shape[1], tok.shape[2], v.width, v.heads
    idx = torch.arange(m).view(m, 1, 1)
    h = p["embed.weight"][idx, tok] + p["pos_embed"][:, None, :length, :]  # M x B x L x d
    act = _act(v.activation)
    for i in range(v.depth):
        pre = f"blocks.{i}"
        qkv = _linear(_ln(h, f"{pre}.ln1", p), p[f"{pre}.attn.qkv.weight"], p[f"{pre}.attn.qkv.bias"])  # M x B x L x 3d
        q, k, val = (t.reshape(m * b, length, heads, d // heads).transpose(1, 2) for t in qkv.split(d, -1))
        att = F.scaled_dot_product_attention(q, k, val)  # (M*B) x H x L x d/H
        att = att.transpose(1, 2).reshape(m, b, length, d)
        h = h + _drop(_linear(att, p[f"{pre}.attn.proj.weight"], p[f"{pre}.attn.proj.bias"]), rates)
        y = act(_linear(_ln(h, f"{pre}.ln2", p), p[f"{pre}.mlp.fc1.weight"], p[f"{pre}.mlp.fc1.bias"]))
        h = h + _drop(_linear(y, p[f"{pre}.mlp.fc2.weight"], p[f"{pre}.mlp.fc2.bias"]), rates)
    pooled = _ln(h, "ln_f", p).mean(2)  # M x B x d
    return _linear(pooled, p["head.weight"], p["head.bias"])


class _Attention(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)


class _MLP(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d, 2 * d)
        self.fc2 = nn.Linear(2 * d, d)


class _TBlock(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = _Attention(d)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = _MLP(d)


class TinyTransformer(nn.Module):
    """Token + position embeddings, ``depth`` pre-norm blocks (attention, 2x MLP), final norm, mean pool, head."""

    def __init__(self, v: Variant, vocab: int, max_len: int, n_classes: int) -> None:
        super().__init__()
        self.variant = v
        self.embed = nn.Embedding(vocab, v.width)
        self.pos_embed = nn.Parameter(torch.zeros(max_len, v.width))
        self.blocks = nn.ModuleList(_TBlock(v.width) for _ in range(v.depth))
        self.ln_f = nn.LayerNorm(v.width)
        self.head = nn.Linear(v.width, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return _single(self, transformer_forward, x)


# ----------------------------------------------------------------------------------------- variants

Forward = Callable[["Variant", Params, Params, Tensor, "Tensor | None", bool], Tensor]


def _single(module: nn.Module, forward: Forward, x: Tensor) -> Tensor:
    """A module's forward = the batched forward at M = 1 (BatchNorm running stats updated in train mode)."""
    params = {k: v.unsqueeze(0) for k, v in module.named_parameters()}
    bufs = {k: v.view(1, *v.shape) for k, v in module.named_buffers() if v.is_floating_point()}
    out = forward(module.variant, params, bufs, x, None, module.training)  # type: ignore[arg-type]
    return out[0]


@dataclass(frozen=True)
class Variant:
    """One architecture of a family: ``depth`` hidden layers / residual blocks / transformer blocks of
    ``width`` units / channels / model dims. ``activation`` is filled in per run (not part of the name)."""

    family: str
    depth: int
    width: int
    heads: int = 2
    activation: str = field(default="relu", compare=False)

    @property
    def name(self) -> str:
        return f"{self.family}-d{self.depth}-w{self.width}"


VARIANTS: dict[str, tuple[Variant, ...]] = {
    "mlp": tuple(Variant("mlp", d, w) for d, w in ((1, 32), (2, 32), (2, 64), (3, 48), (4, 32))),
    "resnet": tuple(Variant("resnet", d, w) for d, w in ((1, 8), (2, 8), (1, 16), (2, 12))),
    "transformer": tuple(Variant("transformer", d, w) for d, w in ((1, 16), (2, 16), (1, 32), (2, 24))),
}
FORWARDS: dict[str, Forward] = {"mlp": mlp_forward, "resnet": resnet_forward, "transformer": transformer_forward}


def family_of(arch: str) -> str:
    """Family of an index ``arch`` value: ``mlp-d2-w32`` -> ``mlp``; ``arch1`` -> ``arch1``."""
    return arch.split("-", 1)[0]


def get_variant(name: str, activation: str = "relu") -> Variant:
    """The registered variant called ``name`` (e.g. ``resnet-d2-w12``)."""
    for v in VARIANTS.get(family_of(name), ()):
        if v.name == name:
            return Variant(v.family, v.depth, v.width, v.heads, activation)
    known = [v.name for vs in VARIANTS.values() for v in vs]
    raise ValueError(f"unknown architecture {name!r}; choose from {known}")


def build_variant(v: Variant, in_channels: int, in_size: int, n_classes: int, vocab: int = 0) -> nn.Module:
    """The module of variant ``v`` for inputs of ``in_channels x in_size x in_size`` (tokens: vocab, length)."""
    if v.family == "mlp":
        return MLPNet(v, in_channels * in_size * in_size, n_classes)
    if v.family == "resnet":
        return SmallResNet(v, in_channels, n_classes)
    if v.family == "transformer":
        return TinyTransformer(v, vocab, in_size, n_classes)
    raise ValueError(f"unknown family {v.family!r}; choose from {FAMILIES}")


def mlp_spec(v: Variant) -> ArchSpec:
    """Hidden-unit chain of an MLP variant (for ``model.zoo.permute``): every hidden layer may be permuted."""
    layers = tuple(LayerSpec(f"layers.{i}.weight", f"layers.{i}.bias") for i in range(v.depth))
    return ArchSpec(
        name=v.name, layers=layers + (LayerSpec("head.weight", "head.bias"),),
        inputs_per_channel=(1,) * v.depth, input_size=None,
        description=f"MLP: {v.depth} hidden linear layers of {v.width} units, linear head",
    )
