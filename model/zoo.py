"""Model-zoo generator: the training data of SNE (``sne zoo``).

Many small CNNs (``model.archs``) are trained at once on an offline dataset
(``model.datasets``), each with its own hyperparameters sampled as in Unterthiner et al.
(2020), Appendix A.2 (ranges reshaped so that accuracies spread, see :data:`DEFAULT_SPACE`),
and checkpoints are saved at several epochs so that accuracies run from chance to the best.

How many models at once: a *group* (~100 runs sharing activation and batch size) keeps its
parameters stacked (``M x ...``). Two interchangeable engines compute the per-model gradients:

* ``"grouped"`` (default): a batched forward over the stacked parameters where conv layers
  become one grouped convolution (``groups=M``) and linear layers one ``baddbmm``; autograd of
  the *sum* of the per-model losses gives each model its own gradient (models share no
  parameter). About 1.7x faster than ``vmap`` on a 2-core CPU (measured, see README).
* ``"vmap"``: ``torch.func.vmap(grad(loss))`` over ``functional_call`` of the arch module -
  the reference; ``tests/test_zoo.py`` checks both engines give the same gradients.

Each model has its own minibatch order over its own training subset (the sampled fraction of
the training set); an *epoch* is ``ceil(N_train / batch_size)`` steps for every model, so a
model trained on a fraction f sees its subset about 1/f times per epoch (which widens the
generalization gap). Optimizers (SGD with momentum 0.9, Adam, RMSprop) are applied per model
from stacked state; learning rate, L2 and dropout are per-model tensors.

Output layout (``out_dir``)::

    checkpoints/<id>.safetensors   arch state_dict, float32; metadata arch/dataset/epoch/run_id
    index.csv                      one row per checkpoint, columns INDEX_COLUMNS
    zoo.json                       arch, dataset, description, n_runs, seed, save_epochs, timing

Resumable: the index is appended atomically after every group; a rerun with the same
arguments skips every run already in the index (a larger ``n_runs`` extends the zoo - the
hyperparameters and split of run ``i`` depend only on ``(seed, i)``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.archs import RateDropout, build_arch, get_spec
from model.datasets import Dataset, load_dataset

__all__ = [
    "DEFAULT_SAVE_EPOCHS",
    "DEFAULT_SPACE",
    "HParams",
    "HParamSpace",
    "INDEX_COLUMNS",
    "SPLITS",
    "ZooSummary",
    "batched_forward",
    "checkpoint_id",
    "generate_zoo",
    "init_state",
    "load_index",
    "load_zoo_checkpoint",
    "sample_hparams",
    "split_for_run",
]

ZOO_FORMAT_VERSION = 1
DEFAULT_SAVE_EPOCHS: tuple[int, ...] = (0, 1, 2, 4, 8, 12)
SPLITS: tuple[str, ...] = ("train", "val", "test")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "rmsprop")
INITS: tuple[str, ...] = (
    "xavier_normal",
    "xavier_uniform",
    "he_normal",
    "he_uniform",
    "orthogonal",
    "normal",
    "trunc_normal",
)
#: inits whose ``init_scale`` is an absolute standard deviation (Unterthiner's RandomNormal /
#: TruncatedNormal); for the others it multiplies the fan-based gain.
STD_INITS: frozenset[str] = frozenset({"normal", "trunc_normal"})

HP_COLUMNS: tuple[str, ...] = (
    "hp_optimizer",
    "hp_lr",
    "hp_init",
    "hp_init_scale",
    "hp_l2",
    "hp_dropout",
    "hp_activation",
    "hp_batch_size",
    "hp_train_fraction",
    "hp_epochs",
)
INDEX_COLUMNS: tuple[str, ...] = (
    "id",
    "run_id",
    "arch",
    "dataset",
    "epoch",
    "path",
    "train_acc",
    "test_acc",
    "gap",
    "train_loss",
    "test_loss",
    "split",
) + HP_COLUMNS
_INT_COLUMNS = frozenset({"run_id", "epoch", "hp_batch_size", "hp_epochs"})
_FLOAT_COLUMNS = frozenset(
    {"train_acc", "test_acc", "gap", "train_loss", "test_loss", "hp_lr", "hp_init_scale", "hp_l2",
     "hp_dropout", "hp_train_fraction"}
)


# --------------------------------------------------------------------------------------------
# Hyperparameters
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HParamSpace:
    """Sampling ranges (Unterthiner et al. 2020, A.2, reshaped for small zoos on tiny data).

    Learning rates are log-uniform per optimizer: one shared range such as [1e-4, 1e-1] left
    about half of an SGD zoo at chance after 10 epochs, so each optimizer gets the range over
    which its accuracy goes from poor to best. Training length is one of the save epochs >= 2.
    """

    optimizers: tuple[str, ...] = OPTIMIZERS
    lr_range: tuple[tuple[str, float, float], ...] = (
        ("sgd", 3e-3, 3e-1),
        ("adam", 2e-4, 2e-2),
        ("rmsprop", 1e-4, 1e-2),
    )
    inits: tuple[str, ...] = INITS
    gain_range: tuple[float, float] = (0.5, 2.0)  # log-uniform multiplier of fan-based inits
    std_range: tuple[float, float] = (1e-2, 0.5)  # log-uniform std of normal / trunc_normal
    l2_range: tuple[float, float] = (1e-8, 1e-2)  # log-uniform weight-decay coefficient
    dropout_range: tuple[float, float] = (0.0, 0.5)  # uniform; 0 with probability p_no_dropout
    p_no_dropout: float = 0.3
    activations: tuple[str, ...] = ("relu", "tanh", "gelu")
    batch_sizes: tuple[int, ...] = (32, 64, 128)
    train_fraction_range: tuple[float, float] = (0.1, 1.0)  # uniform
    min_epochs: int = 2  # training length: uniform over save epochs >= min_epochs

    def lr_bounds(self, optimizer: str) -> tuple[float, float]:
        for name, lo, hi in self.lr_range:
            if name == optimizer:
                return lo, hi
        raise ValueError(f"no learning-rate range for optimizer {optimizer!r}")


DEFAULT_SPACE = HParamSpace()


@dataclass(frozen=True)
class HParams:
    """Hyperparameters of one training run."""

    optimizer: str
    lr: float
    init: str
    init_scale: float
    l2: float
    dropout: float
    activation: str
    batch_size: int
    train_fraction: float
    epochs: int

    def as_row(self) -> dict[str, Any]:
        """Index columns ``hp_*``."""
        return {f"hp_{k}": v for k, v in asdict(self).items()}


def _run_rng(seed: int, run_id: int, stream: int) -> np.random.Generator:
    """Independent random stream per (seed, run, purpose): results do not depend on n_runs."""
    return np.random.default_rng([int(seed), int(run_id), int(stream)])


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_hparams(
    run_id: int, seed: int, save_epochs: Sequence[int] = DEFAULT_SAVE_EPOCHS, space: HParamSpace = DEFAULT_SPACE
) -> HParams:
    """Hyperparameters of run ``run_id``, a pure function of ``(seed, run_id)``."""
    rng = _run_rng(seed, run_id, 0)
    optimizer = str(rng.choice(space.optimizers))
    lr = _loguniform(rng, *space.lr_bounds(optimizer))
    init = str(rng.choice(space.inits))
    scale_range = space.std_range if init in STD_INITS else space.gain_range
    init_scale = _loguniform(rng, *scale_range)
    l2 = _loguniform(rng, *space.l2_range)
    use_dropout = rng.uniform() >= space.p_no_dropout
    dropout_draw = float(rng.uniform(*space.dropout_range))
    activation = str(rng.choice(space.activations))
    batch_size = int(rng.choice(space.batch_sizes))
    train_fraction = float(rng.uniform(*space.train_fraction_range))
    lengths = [e for e in save_epochs if e >= space.min_epochs] or [max(save_epochs)]
    epochs = int(rng.choice(lengths))
    return HParams(
        optimizer=optimizer,
        lr=lr,
        init=init,
        init_scale=init_scale,
        l2=l2,
        dropout=dropout_draw if use_dropout else 0.0,
        activation=activation,
        batch_size=batch_size,
        train_fraction=train_fraction,
        epochs=epochs,
    )


def split_for_run(run_id: int, seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), block: int = 20) -> str:
    """Split of a training run: exact 70/15/15 proportions within every block of 20 run ids.

    Deterministic from ``(seed, run_id // block)`` and independent of the zoo size; all
    checkpoints of a run share its split, so no run is ever in two splits.
    """
    counts = [int(round(f * block)) for f in fractions]
    counts[0] = block - sum(counts[1:])
    labels = np.repeat(np.arange(3), counts)
    perm = np.random.default_rng([int(seed), int(run_id) // block, 7919]).permutation(labels)
    return SPLITS[int(perm[run_id % block])]


def checkpoint_id(arch: str, dataset: str, seed: int, run_id: int, epoch: int) -> str:
    """Unique id of a checkpoint, also across zoos of other arch/dataset/seed."""
    return f"{arch}_{dataset}_s{seed}_r{run_id:05d}_e{epoch:03d}"


# --------------------------------------------------------------------------------------------
# Initialization and the batched forward
# --------------------------------------------------------------------------------------------


def init_state(arch: str, hp: HParams, in_channels: int, n_classes: int, generator: torch.Generator) -> dict[str, Tensor]:
    """Initial state_dict of one run: ``hp.init`` for conv/linear weights, zero biases (Keras-like)."""
    module = build_arch(arch, in_channels=in_channels, n_classes=n_classes, activation=hp.activation)
    state = {k: v.detach().clone() for k, v in module.state_dict().items()}
    s = hp.init_scale
    for layer in get_spec(arch).layers:
        w = state[layer.weight]
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
        state[layer.bias].zero_()
    return state


def _chain_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
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
    for name, mod in _chain_modules(model):
        if isinstance(mod, nn.Conv2d):
            w = params[f"{name}.weight"]
            bias = params[f"{name}.bias"].reshape(-1)
            o, c = w.shape[1], w.shape[2]
            w = w.reshape(m_models * o, c, *w.shape[3:])
            kw = dict(stride=mod.stride, padding=mod.padding, dilation=mod.dilation)
            if shared:
                h = F.conv2d(h, w, bias, **kw)
                shared = False
            else:
                h = F.conv2d(h, w, bias, groups=m_models, **kw)
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
            raise ValueError("use RateDropout in zoo architectures")
        elif shared:
            raise ValueError(f"{name}: {type(mod).__name__} before the first conv is unsupported")
        else:  # elementwise activation
            h = mod(h)
    if not flat:
        raise ValueError("architecture must end in linear layers after Flatten")
    return h


def _make_vmap_grad(model: nn.Module) -> Callable[..., dict[str, Tensor]]:
    """Per-model gradients via ``vmap(grad(functional_call))`` (reference engine)."""
    from torch.func import functional_call, grad, vmap

    rate_names = [n for n, _ in model.named_buffers() if n.endswith("rate")]

    def loss_fn(p: dict[str, Tensor], rate: Tensor, x: Tensor, y: Tensor) -> Tensor:
        logits = functional_call(model, (p, {n: rate for n in rate_names}), (x,))
        return F.cross_entropy(logits, y)

    return vmap(grad(loss_fn), in_dims=(0, 0, 0, 0), randomness="different")


def _grouped_grad(
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
            return _grouped_grad(model, params, rates, x, y)
        if engine == "vmap":
            return _make_vmap_grad(model)(params, rates, x, y)
        raise ValueError(f"unknown engine {engine!r}; use 'grouped' or 'vmap'")
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------
# Training one group
# --------------------------------------------------------------------------------------------


@dataclass
class _OptState:
    """Stacked per-model optimizer state; SGD momentum buffer and Adam's first moment share m."""

    lr: Tensor  # (M,)
    l2: Tensor
    kind: Tensor  # (M,) 0 sgd, 1 adam, 2 rmsprop
    m: dict[str, Tensor]
    v: dict[str, Tensor]
    step: int = 0

    def select(self, keep: Tensor) -> "_OptState":
        return _OptState(
            self.lr[keep], self.l2[keep], self.kind[keep],
            {k: t[keep] for k, t in self.m.items()}, {k: t[keep] for k, t in self.v.items()}, self.step,
        )


_MOMENTUM, _BETA1, _BETA2, _RMS_ALPHA, _EPS = 0.9, 0.9, 0.999, 0.99, 1e-8


@torch.no_grad()
def _opt_step(params: dict[str, Tensor], grads: dict[str, Tensor], st: _OptState) -> None:
    """One in-place update of every model with its own optimizer, lr and L2 (weights only)."""
    st.step += 1
    t = st.step
    is_sgd = st.kind == 0
    is_adam = st.kind == 1
    m_count = st.lr.shape[0]
    bias1 = 1.0 - _BETA1**t
    bias2 = 1.0 - _BETA2**t
    beta2 = torch.where(is_adam, torch.tensor(_BETA2), torch.tensor(_RMS_ALPHA))
    for k, p in params.items():
        shape = (m_count,) + (1,) * (p.dim() - 1)
        g = grads[k]
        if k.endswith("weight"):
            g = g + st.l2.view(shape) * p
        sgd_b, adam_b = is_sgd.view(shape), is_adam.view(shape)
        m_new = torch.where(sgd_b, _MOMENTUM * st.m[k] + g, _BETA1 * st.m[k] + (1 - _BETA1) * g)
        b2 = beta2.view(shape)
        v_new = b2 * st.v[k] + (1 - b2) * g * g
        st.m[k], st.v[k] = m_new, v_new
        adam_upd = (m_new / bias1) / ((v_new / bias2).sqrt() + _EPS)
        rms_upd = g / (v_new.sqrt() + _EPS)
        upd = torch.where(sgd_b, m_new, torch.where(adam_b, adam_upd, rms_upd))
        p.sub_(st.lr.view(shape) * upd)


@torch.no_grad()
def _evaluate(
    model: nn.Module, params: dict[str, Tensor], ds: Dataset, train_masks: Tensor, chunk: int | None = None
) -> dict[str, Tensor]:
    """Per-model accuracy and mean loss on its own training subset and on the test set."""
    model.eval()
    if chunk is None:  # widest activation (first layer, all models) ~4M floats: cache-friendly
        m_models = next(iter(params.values())).shape[0]
        first = next(m for _, m in _chain_modules(model) if isinstance(m, (nn.Conv2d, nn.Linear)))
        width = getattr(first, "out_channels", getattr(first, "out_features", 1))
        per_sample = m_models * width * ds.x_train.shape[-1] * ds.x_train.shape[-2]
        chunk = int(min(2048, max(16, 2**22 // per_sample)))

    def run(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        correct, losses = [], []
        for s in range(0, x.shape[0], chunk):
            logits = batched_forward(model, params, x[s : s + chunk])
            yy = y[s : s + chunk]
            correct.append((logits.argmax(-1) == yy).float())
            losses.append(F.cross_entropy(logits.transpose(1, 2), yy.expand(logits.shape[0], -1), reduction="none"))
        return torch.cat(correct, 1), torch.cat(losses, 1)

    c_tr, l_tr = run(ds.x_train, ds.y_train)
    c_te, l_te = run(ds.x_test, ds.y_test)
    w = train_masks.float()
    n = w.sum(1).clamp_min(1)
    return {
        "train_acc": (c_tr * w).sum(1) / n,
        "train_loss": (l_tr * w).sum(1) / n,
        "test_acc": c_te.mean(1),
        "test_loss": l_te.mean(1),
    }


@dataclass
class _GroupResult:
    rows: list[dict[str, Any]]
    n_diverged: int


def _train_group(
    *,
    out_dir: Path,
    arch: str,
    ds: Dataset,
    seed: int,
    run_ids: list[int],
    hps: list[HParams],
    save_epochs: tuple[int, ...],
    engine: str,
    on_epoch: Callable[[int], None],
) -> _GroupResult:
    """Train one group of runs (same activation and batch size) and write its checkpoints."""
    activation, bs = hps[0].activation, hps[0].batch_size
    assert all(h.activation == activation and h.batch_size == bs for h in hps)
    model = build_arch(arch, in_channels=ds.in_channels, n_classes=ds.n_classes, activation=activation)
    n_train = ds.x_train.shape[0]

    # per-run initial weights, training subsets and data-order generators
    states, subsets, gens = [], [], []
    for rid, hp in zip(run_ids, hps):
        g_init = torch.Generator().manual_seed(int(_run_rng(seed, rid, 1).integers(2**62)))
        states.append(init_state(arch, hp, ds.in_channels, ds.n_classes, g_init))
        g_data = torch.Generator().manual_seed(int(_run_rng(seed, rid, 2).integers(2**62)))
        n_sub = max(bs, int(round(hp.train_fraction * n_train)))
        n_sub = min(n_sub, n_train)
        subsets.append(torch.randperm(n_train, generator=g_data)[:n_sub])
        gens.append(g_data)
    torch.manual_seed(int(_run_rng(seed, run_ids[0], 3).integers(2**62)))  # dropout masks

    keys = list(states[0].keys())
    params = {k: torch.stack([s[k] for s in states]).contiguous() for k in keys}
    masks = torch.zeros(len(run_ids), n_train, dtype=torch.bool)
    for i, sub in enumerate(subsets):
        masks[i, sub] = True
    st = _OptState(
        lr=torch.tensor([h.lr for h in hps], dtype=torch.float32),
        l2=torch.tensor([h.l2 for h in hps], dtype=torch.float32),
        kind=torch.tensor([OPTIMIZERS.index(h.optimizer) for h in hps]),
        m={k: torch.zeros_like(v) for k, v in params.items()},
        v={k: torch.zeros_like(v) for k, v in params.items()},
    )
    rates = torch.tensor([h.dropout for h in hps], dtype=torch.float32)
    active = list(range(len(run_ids)))  # positions (into run_ids) of the models still training
    steps = math.ceil(n_train / bs)
    rows: list[dict[str, Any]] = []
    n_diverged = 0
    max_epochs = max(h.epochs for h in hps)
    ckpt_dir = out_dir / "checkpoints"
    grad_fn = _make_vmap_grad(model) if engine == "vmap" else None

    def checkpoint(epoch: int) -> None:
        nonlocal params, st, rates, active, n_diverged
        finite = torch.stack([torch.isfinite(p.reshape(p.shape[0], -1)).all(1) for p in params.values()]).all(0)
        metrics = _evaluate(model, params, ds, masks[active])
        for j, pos in enumerate(active):
            if not bool(finite[j]):
                continue
            rid, hp = run_ids[pos], hps[pos]
            cid = checkpoint_id(arch, ds.name, seed, rid, epoch)
            rel = f"checkpoints/{cid}.safetensors"
            _save_checkpoint(ckpt_dir / f"{cid}.safetensors", {k: params[k][j] for k in keys}, arch, ds.name, epoch, rid)
            tr, te = float(metrics["train_acc"][j]), float(metrics["test_acc"][j])
            rows.append(
                {
                    "id": cid, "run_id": rid, "arch": arch, "dataset": ds.name, "epoch": epoch, "path": rel,
                    "train_acc": tr, "test_acc": te, "gap": tr - te,
                    "train_loss": float(metrics["train_loss"][j]), "test_loss": float(metrics["test_loss"][j]),
                    "split": split_for_run(rid, seed), **hp.as_row(),
                }
            )
        # models that diverged or reached their training length leave the group
        keep = [j for j, pos in enumerate(active) if bool(finite[j]) and hps[pos].epochs > epoch]
        n_diverged += int((~finite).sum())
        if len(keep) < len(active):
            idx = torch.tensor(keep, dtype=torch.long)
            params = {k: v[idx].contiguous() for k, v in params.items()}
            st = st.select(idx)
            rates = rates[idx]
            active = [active[j] for j in keep]

    if 0 in save_epochs:
        checkpoint(0)
    for epoch in range(1, max_epochs + 1):
        if not active:
            break
        # per-model minibatch order over its own subset: fresh permutations, cycled
        order = torch.empty(len(active), steps * bs, dtype=torch.long)
        for j, pos in enumerate(active):
            sub = subsets[pos]
            reps = math.ceil(steps * bs / sub.numel())
            order[j] = torch.cat([sub[torch.randperm(sub.numel(), generator=gens[pos])] for _ in range(reps)])[: steps * bs]
        order = order.view(len(active), steps, bs)
        for s in range(steps):
            idx = order[:, s]
            x, y = ds.x_train[idx], ds.y_train[idx]
            if grad_fn is None:  # rate 0 is the identity: skip mask generation when no model drops
                drop = rates if bool((rates > 0).any()) else None
                grads = _grouped_grad(model.train(), params, drop, x, y)
            else:
                model.train()
                grads = grad_fn(params, rates, x, y)
            _opt_step(params, grads, st)
        on_epoch(len(active))
        if epoch in save_epochs or epoch == max_epochs:
            checkpoint(epoch)
    return _GroupResult(rows=rows, n_diverged=n_diverged)


def _save_checkpoint(path: Path, state: dict[str, Tensor], arch: str, dataset: str, epoch: int, run_id: int) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to(torch.float32).clone().contiguous() for k, v in state.items()}
    meta = {"arch": arch, "dataset": dataset, "epoch": str(epoch), "run_id": str(run_id), "format": "pt"}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------
# Index and zoo files
# --------------------------------------------------------------------------------------------


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _format_value(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    return str(v)


def _append_index(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows atomically (rewrite to a temp file, then rename): never a half-written index."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if not old:
        writer.writerow(INDEX_COLUMNS)
    for r in rows:
        writer.writerow([_format_value(r[c]) for c in INDEX_COLUMNS])
    _atomic_write_text(path, old + buf.getvalue())


def _parse(col: str, v: str) -> Any:
    if col in _INT_COLUMNS:
        return int(v)
    if col in _FLOAT_COLUMNS:
        return float(v)
    return v


def load_index(zoo_dir: Path | str) -> list[dict[str, Any]]:
    """Rows of ``index.csv`` with typed values (ints, floats, strings); [] if none yet."""
    path = Path(zoo_dir) / "index.csv"
    if not path.exists():
        return []
    with open(path, encoding="utf-8", newline="") as f:
        return [{k: _parse(k, v) for k, v in row.items()} for row in csv.DictReader(f)]


def load_zoo_checkpoint(zoo_dir: Path | str, row: dict[str, Any]) -> dict[str, Tensor]:
    """State dict of one index row; loads strictly into ``build_arch(row['arch'])``."""
    from safetensors.torch import load_file

    return load_file(str(Path(zoo_dir) / row["path"]))


@dataclass
class ZooSummary:
    """What one ``generate_zoo`` call did; ``runs_per_minute`` counts runs trained in this call."""

    out_dir: Path
    arch: str
    dataset: str
    n_runs: int
    runs_trained: int
    runs_skipped: int
    n_checkpoints: int
    n_diverged: int
    wall_seconds: float
    runs_per_minute: float
    split_runs: dict[str, int] = field(default_factory=dict)


def _zoo_config(arch: str, dataset: str, ds: Dataset, seed: int, save_epochs: tuple[int, ...], space: HParamSpace) -> dict[str, Any]:
    return {
        "format_version": ZOO_FORMAT_VERSION,
        "arch": arch,
        "arch_description": get_spec(arch).description,
        "dataset": dataset,
        "dataset_description": ds.description,
        "image_size": ds.image_size,
        "in_channels": ds.in_channels,
        "n_classes": ds.n_classes,
        "n_train": int(ds.x_train.shape[0]),
        "n_test": int(ds.x_test.shape[0]),
        "seed": seed,
        "save_epochs": list(save_epochs),
        "hparam_space": json.loads(json.dumps(asdict(space))),
        "split_fractions": {"train": 0.7, "val": 0.15, "test": 0.15},
    }


_IMMUTABLE_KEYS = ("format_version", "arch", "dataset", "image_size", "seed", "save_epochs", "hparam_space")


def _group_runs(run_ids: Iterable[int], hps: dict[int, HParams], group_size: int) -> list[list[int]]:
    """Groups of runs sharing activation and batch size, near-equal sizes <= group_size,
    sorted by training length so models leave a group together."""
    buckets: dict[tuple[str, int], list[int]] = {}
    for rid in run_ids:
        hp = hps[rid]
        buckets.setdefault((hp.activation, hp.batch_size), []).append(rid)
    groups = []
    for key in sorted(buckets):
        rids = sorted(buckets[key], key=lambda r: (hps[r].epochs, r))
        n_groups = math.ceil(len(rids) / group_size)
        for chunk in np.array_split(np.array(rids), n_groups):
            groups.append([int(r) for r in chunk])
    return groups


def generate_zoo(
    out_dir: Path | str,
    arch: str = "arch1",
    dataset: str = "digits",
    n_runs: int = 2000,
    seed: int = 0,
    save_epochs: tuple[int, ...] = DEFAULT_SAVE_EPOCHS,
    group_size: int = 100,
    progress: bool = True,
    engine: str = "grouped",
    space: HParamSpace = DEFAULT_SPACE,
    threads: int | None = None,
) -> ZooSummary:
    """Train ``n_runs`` models of ``arch`` on ``dataset`` and write the zoo to ``out_dir``.

    Resumable: runs already in ``out_dir/index.csv`` are skipped; the zoo's fixed settings
    (arch, dataset, seed, save_epochs, hyperparameter space) must match the existing zoo.json.
    ``threads`` sets ``torch.set_num_threads`` for the call (default: leave as is).
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    arch, dataset = arch.lower(), dataset.lower()
    save_epochs = tuple(sorted({int(e) for e in save_epochs}))
    if not save_epochs or save_epochs[0] < 0 or save_epochs[-1] < 1:
        raise ValueError("save_epochs must be non-negative and include an epoch >= 1")
    if n_runs < 0 or group_size < 1:
        raise ValueError("n_runs must be >= 0 and group_size >= 1")
    if engine not in ("grouped", "vmap"):
        raise ValueError(f"unknown engine {engine!r}")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        spec = get_spec(arch)
        ds = load_dataset(dataset, spec.input_size)
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        cfg_path = out_dir / "zoo.json"
        config = _zoo_config(arch, dataset, ds, seed, save_epochs, space)
        previous: dict[str, Any] = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
        for k in _IMMUTABLE_KEYS:
            if previous and previous.get(k) != config[k]:
                raise ValueError(f"{out_dir} holds a zoo with {k}={previous.get(k)!r}, not {config[k]!r}")

        index_path = out_dir / "index.csv"
        done = {r["run_id"] for r in load_index(out_dir)}
        hps = {rid: sample_hparams(rid, seed, save_epochs, space) for rid in range(n_runs)}
        pending = [rid for rid in range(n_runs) if rid not in done]
        groups = _group_runs(pending, hps, group_size)
        total_model_epochs = sum(hps[r].epochs for r in pending)
        wall_before = float(previous.get("wall_seconds_total", 0.0))

        def write_config(wall_this_call: float) -> None:
            rows = load_index(out_dir)
            body = dict(config)
            body.update(
                n_runs=max(n_runs, int(previous.get("n_runs", 0))),
                n_runs_done=len({r["run_id"] for r in rows}),
                n_checkpoints=len(rows),
                n_diverged=int(previous.get("n_diverged", 0)) + n_diverged,
                torch_threads=torch.get_num_threads(),
                engine=engine,
                group_size=group_size,
                wall_seconds=round(wall_this_call, 3),
                wall_seconds_total=round(wall_before + wall_this_call, 3),
            )
            _atomic_write_text(cfg_path, json.dumps(body, indent=2) + "\n")

        n_diverged = 0
        trained = 0
        with _progress(progress, total_model_epochs, f"zoo {arch}/{dataset}") as advance:
            for group in groups:
                with torch.random.fork_rng(devices=[]):  # dropout seeding must not leak
                    res = _train_group(
                        out_dir=out_dir,
                        arch=arch,
                        ds=ds,
                        seed=seed,
                        run_ids=group,
                        hps=[hps[r] for r in group],
                        save_epochs=save_epochs,
                        engine=engine,
                        on_epoch=advance,
                    )
                _append_index(index_path, res.rows)
                n_diverged += res.n_diverged
                trained += len(group)
                write_config(time.perf_counter() - t0)
        wall = time.perf_counter() - t0
        write_config(wall)
        rows = load_index(out_dir)
        split_runs: dict[str, int] = {s: 0 for s in SPLITS}
        for rid in {r["run_id"]: r["split"] for r in rows}.items():
            split_runs[rid[1]] += 1
        return ZooSummary(
            out_dir=out_dir,
            arch=arch,
            dataset=dataset,
            n_runs=n_runs,
            runs_trained=trained,
            runs_skipped=n_runs - len(pending),
            n_checkpoints=len(rows),
            n_diverged=n_diverged,
            wall_seconds=wall,
            runs_per_minute=(60.0 * trained / wall) if trained and wall > 0 else 0.0,
            split_runs=split_runs,
        )
    finally:
        torch.set_num_threads(old_threads)


class _progress:
    """Rich progress bar over model-epochs (or a no-op); yields an ``advance(n)`` callable."""

    def __init__(self, enabled: bool, total: int, label: str) -> None:
        self.enabled, self.total, self.label = enabled, total, label
        self._bar: Any = None

    def __enter__(self) -> Callable[[int], None]:
        if not self.enabled or self.total == 0:
            return lambda n: None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self._bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("model-epochs"), TimeElapsedColumn(), TimeRemainingColumn(),
        )
        self._bar.__enter__()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
