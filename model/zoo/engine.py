"""How many zoo models train at once: initialisation, the batched forward and two gradient engines.

A *group* of runs keeps its parameters stacked (``M x ...``). Two interchangeable engines compute the
per-model gradients:

* ``"grouped"`` (default): a batched forward over the stacked parameters where conv layers become one
  grouped convolution (``groups=M``) and linear layers one ``baddbmm``; autograd of the *sum* of the
  per-model losses gives each model its own gradient (models share no parameter). About 1.7x faster
  than ``vmap`` on a 2-core CPU (measured, see README).
* ``"vmap"``: ``torch.func.vmap(grad(loss))`` over ``functional_call`` of the arch module - the
  reference; ``tests/test_zoo.py`` checks both engines give the same gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.zoo.archs import RateDropout, build_arch, get_spec
from model.zoo.space import HParams

ENGINES: tuple[str, ...] = ("grouped", "vmap")


def init_weight_(w: Tensor, hp: HParams, generator: torch.Generator) -> None:
    """Fill one conv/linear weight in place with ``hp.init`` scaled by ``hp.init_scale``."""
    s = hp.init_scale
    if hp.init == "xavier_normal":
        nn.init.xavier_normal_(w, gain=s, generator=generator)
    elif hp.init == "xavier_uniform":
        nn.init.xavier_uniform_(w, gain=s, generator=generator)
    elif hp.init in ("he_normal", "he_uniform"):
        fill = nn.init.kaiming_normal_ if hp.init == "he_normal" else nn.init.kaiming_uniform_
        fill(w, nonlinearity="relu", generator=generator)
        w.mul_(s)
    elif hp.init == "orthogonal":
        nn.init.orthogonal_(w, gain=s, generator=generator)
    elif hp.init == "normal":
        nn.init.normal_(w, std=s, generator=generator)
    elif hp.init == "trunc_normal":
        nn.init.trunc_normal_(w, std=s, a=-2 * s, b=2 * s, generator=generator)
    else:
        raise ValueError(f"unknown init {hp.init!r}")


def init_state(arch: str, hp: HParams, in_channels: int, n_classes: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Initial state_dict of one run: ``hp.init`` for conv/linear weights, zero biases (Keras-like)."""
    module = build_arch(arch, in_channels=in_channels, n_classes=n_classes, activation=hp.activation)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    for layer in get_spec(arch).layers:
        init_weight_(state[layer.weight], hp, generator)
        state[layer.bias].zero_()
    return state


def chain_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Leaf modules of a chain architecture in forward order (archs are features -> classifier)."""
    return [(n, m) for n, m in model.named_modules() if len(list(m.children())) == 0]


def batched_forward(
    model: nn.Module,
    params: dict[str, Tensor],
    x: Tensor,
    rates: Tensor | None = None,
) -> Tensor:
    """Logits ``M x B x K`` of M stacked models (params ``M x ...``) of the chain ``model``.

    ``x`` is either per-model ``M x B x C x H x W`` or shared ``B x C x H x W``. Conv
    activations are kept as ``B x (M*C) x H x W`` so each conv is one grouped convolution and
    pools/activations act per channel; after ``Flatten`` features are ``M x B x F`` (same C,H,W
    order as the module) and linear layers are one ``baddbmm``. ``rates`` (M,) enables dropout
    (training); None means eval mode. Only module types the zoo archs use are supported.
    """
    m_models = next(iter(params.values())).shape[0]
    if x.dim() == 5:
        mm, b = x.shape[:2]
        h = x.transpose(0, 1).reshape(b, mm * x.shape[2], *x.shape[3:])
        shared = False
    else:
        h, shared = x, True
    flat = False  # False: B x (M*C) x H x W ; True: M x B x F
    for name, mod in chain_modules(model):
        if isinstance(mod, nn.Conv2d):
            w = params[f"{name}.weight"]
            bias = params[f"{name}.bias"].reshape(-1)
            o, c = w.shape[1], w.shape[2]
            w = w.reshape(m_models * o, c, *w.shape[3:])
            if isinstance(mod.padding, str):
                raise ValueError(f"{name}: string padding is unsupported")  # noqa: TRY004 (a bad arch)
            groups = 1 if shared else m_models  # shared input: each model's filters see all C channels
            h = F.conv2d(h, w, bias, stride=mod.stride, padding=mod.padding, dilation=mod.dilation, groups=groups)
            shared = False
        elif isinstance(mod, nn.Linear):
            if not flat:
                raise ValueError(f"{name}: linear layer before Flatten/global pooling is unsupported")
            w, bias = params[f"{name}.weight"], params[f"{name}.bias"]
            h = torch.baddbmm(bias.unsqueeze(1), h, w.transpose(1, 2))
        elif isinstance(mod, nn.Flatten):
            b = h.shape[0]
            h = h.reshape(b, m_models, -1).transpose(0, 1)
            flat = True
        elif isinstance(mod, (nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
            h = mod(h)
        elif isinstance(mod, RateDropout):
            if rates is None:
                continue
            keep = 1.0 - rates.to(h.dtype)
            if flat:
                keep_b = keep.view(m_models, 1, 1)
            else:
                keep_b = keep.repeat_interleave(h.shape[1] // m_models).view(1, -1, 1, 1)
            h = h * (torch.rand_like(h) < keep_b) / keep_b
        elif isinstance(mod, nn.Dropout):
            raise ValueError("use RateDropout in zoo architectures")  # noqa: TRY004 (a bad arch, not a bad argument type)
        elif shared:
            raise ValueError(f"{name}: {type(mod).__name__} before the first conv is unsupported")
        else:  # elementwise activation
            h = mod(h)
    if not flat:
        raise ValueError("architecture must end in linear layers after Flatten")
    return h


def make_vmap_grad(model: nn.Module) -> Callable[..., dict[str, Tensor]]:
    """Per-model gradients via ``vmap(grad(functional_call))`` (reference engine)."""
    from torch.func import functional_call, grad, vmap

    rate_names = [n for n, _ in model.named_buffers() if n.endswith("rate")]

    def loss_fn(p: dict[str, Tensor], rate: Tensor, x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, (p, {n: rate for n in rate_names}), (x,))
        return F.cross_entropy(logits, y)

    return vmap(grad(loss_fn), in_dims=(0, 0, 0, 0), randomness="different")


def grouped_grad(
    model: nn.Module, params: dict[str, Tensor], rates: Tensor | None, x: Tensor, y: Tensor
) -> dict[str, Tensor]:
    """Per-model gradients: autograd of the summed per-model mean losses (grouped engine)."""
    leaves = {k: v.detach().requires_grad_(True) for k, v in params.items()}
    logits = batched_forward(model, leaves, x, rates)
    m, b, k = logits.shape
    loss = F.cross_entropy(logits.reshape(m * b, k), y.reshape(-1), reduction="sum") / b
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves.keys(), grads))


def per_model_grads(
    model: nn.Module, params: dict[str, Tensor], rates: Tensor, x: Tensor, y: Tensor, engine: str = "grouped"
) -> dict[str, Tensor]:
    """Gradient of each model's own mean cross-entropy on its minibatch (``x``: M x B x ...)."""
    was_training = model.training
    model.train()
    try:
        if engine == "grouped":
            return grouped_grad(model, params, rates, x, y)
        if engine == "vmap":
            return make_vmap_grad(model)(params, rates, x, y)
        raise ValueError(f"unknown engine {engine!r}; use 'grouped' or 'vmap'")
    finally:
        model.train(was_training)


def minibatch_order(
    subsets: list[torch.Tensor], gens: list[torch.Generator], active: list[int], steps: int, batch_size: int
) -> torch.Tensor:
    """`[M, steps, B]` training indices of one epoch: per active model, fresh permutations of its own subset,
    cycled to fill the epoch (each model sees its own data order)."""
    order = torch.empty(len(active), steps * batch_size, dtype=torch.long)
    for j, pos in enumerate(active):
        sub = subsets[pos]
        reps = math.ceil(steps * batch_size / sub.numel())
        perms = [sub[torch.randperm(sub.numel(), generator=gens[pos])] for _ in range(reps)]
        order[j] = torch.cat(perms)[: steps * batch_size]
    return order.view(len(active), steps, batch_size)  # M x steps x B
