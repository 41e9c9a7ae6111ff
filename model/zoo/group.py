"""Training one group of zoo runs (same activation and batch size) with stacked parameters.

Each model has its own minibatch order over its own training subset (the sampled fraction of the
training set); an *epoch* is ``ceil(N_train / batch_size)`` steps for every model, so a model trained on
a fraction f sees its subset about 1/f times per epoch (which widens the generalization gap). Models that
diverge or reach their training length leave the group, so the stacked tensors shrink as it trains.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from model.zoo.archs import build_arch
from model.zoo.datasets import Dataset
from model.zoo.engine import grouped_grad, init_state, make_vmap_grad, minibatch_order
from model.zoo.evaluate import evaluate_models
from model.zoo.index import save_checkpoint
from model.zoo.optim import OptState, opt_step
from model.zoo.space import HParams, checkpoint_id, run_rng, split_for_run


@dataclass
class GroupResult:
    """Index rows of the checkpoints a group wrote, and how many of its models diverged."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    n_diverged: int = 0


class StackedGroup:
    """What every zoo group trainer shares: per-run initial weights, training subsets and data orders, the
    models stacked along dim 0 (``M x ...`` per key), the epoch loop, index rows, and retiring models that
    diverged or reached their length (the stacks shrink as the group trains).

    Subclasses build ``states`` with their own initialiser and implement ``train_epoch`` and ``save``.
    """

    stacks: tuple[str, ...] = ("params",)  # dicts of stacked tensors that lose a row when a model retires
    ds: Dataset
    batch_size: int
    params: dict[str, Tensor]  # M x ... per key, the active models only
    opt: OptState

    def _stack_runs(
        self, seed: int, run_ids: list[int], hps: list[HParams], n_train: int, init: Callable[[HParams, torch.Generator], dict[str, Tensor]]
    ) -> list[dict[str, Tensor]]:
        """Per-run initial states (seeded by run), training subsets and data-order generators; optimiser,
        dropout rates and the active list. Returns the initial states for the caller to stack."""
        self.seed, self.run_ids, self.hps = seed, run_ids, hps
        states, self.subsets, self.gens = [], [], []
        for rid, hp in zip(run_ids, hps):
            g_init = torch.Generator().manual_seed(int(run_rng(seed, rid, 1).integers(2**62)))
            states.append(init(hp, g_init))
            g_data = torch.Generator().manual_seed(int(run_rng(seed, rid, 2).integers(2**62)))
            n_sub = min(max(self.batch_size, round(hp.train_fraction * n_train)), n_train)
            self.subsets.append(torch.randperm(n_train, generator=g_data)[:n_sub])
            self.gens.append(g_data)
        torch.manual_seed(int(run_rng(seed, run_ids[0], 3).integers(2**62)))  # dropout masks
        self.masks = torch.zeros(len(run_ids), n_train, dtype=torch.bool)  # M x N_train: own subset
        for i, sub in enumerate(self.subsets):
            self.masks[i, sub] = True
        self.rates = torch.tensor([h.dropout for h in hps], dtype=torch.float32)  # M
        self.active = list(range(len(run_ids)))
        self.steps = math.ceil(n_train / self.batch_size)
        self.n_diverged = 0
        self.rows: list[dict[str, Any]] = []  # index rows of the checkpoints written
        return states

    def _make_optimiser(self) -> None:
        hps = self.hps
        self.opt = OptState.create(self.params, [h.lr for h in hps], [h.l2 for h in hps], [h.optimizer for h in hps])

    def train_epoch(self) -> None:
        raise NotImplementedError

    def save(self, epoch: int) -> None:
        raise NotImplementedError

    def index_row(self, cid: str, arch: str, j: int, pos: int, epoch: int, metrics: dict[str, Tensor]) -> dict[str, Any]:
        """The index row of model ``j`` (run position ``pos``) at ``epoch``."""
        rid, hp = self.run_ids[pos], self.hps[pos]
        tr, te = float(metrics["train_acc"][j]), float(metrics["test_acc"][j])
        return {
            "id": cid, "run_id": rid, "arch": arch, "dataset": self.ds.name, "epoch": epoch,
            "path": f"checkpoints/{cid}.safetensors", "train_acc": tr, "test_acc": te, "gap": tr - te,
            "train_loss": float(metrics["train_loss"][j]), "test_loss": float(metrics["test_loss"][j]),
            "split": split_for_run(rid, self.seed), **hp.as_row(),
        }

    def retire(self, finite: Tensor, epoch: int) -> None:
        """Drop the models that diverged (``finite`` false) or trained their last epoch from every stack."""
        keep = [j for j, pos in enumerate(self.active) if bool(finite[j]) and self.hps[pos].epochs > epoch]
        self.n_diverged += int((~finite).sum())
        if len(keep) < len(self.active):
            idx = torch.tensor(keep, dtype=torch.long)
            for name in self.stacks:
                setattr(self, name, {k: v[idx].contiguous() for k, v in getattr(self, name).items()})
            self.opt = self.opt.select(idx)
            self.rates = self.rates[idx]
            self.active = [self.active[j] for j in keep]

    def run_epochs(self, save_epochs: tuple[int, ...], on_epoch: Callable[[int], None] | None = None) -> None:
        """Train every model to its own length, saving at ``save_epochs`` and at its last epoch."""
        max_epochs = max(h.epochs for h in self.hps)
        if 0 in save_epochs:
            self.save(0)
        for epoch in range(1, max_epochs + 1):
            if not self.active:
                break
            self.train_epoch()
            if on_epoch is not None:
                on_epoch(len(self.active))
            if epoch in save_epochs or epoch == max_epochs:
                self.save(epoch)


class GroupTrainer(StackedGroup):
    """The stacked state of the models still training in one group, and the steps that change it.

    ``params`` (``M x ...`` per key), ``opt`` and ``rates`` hold only the ``active`` models; ``active``
    lists their positions in ``run_ids``. :meth:`save` writes checkpoints and drops finished models.
    """

    def __init__(self, out_dir: Path, arch: str, ds: Dataset, seed: int, run_ids: list[int], hps: list[HParams], engine: str) -> None:
        activation, self.batch_size = hps[0].activation, hps[0].batch_size
        if not all(h.activation == activation and h.batch_size == self.batch_size for h in hps):
            raise ValueError("a group shares activation and batch size")
        self.out_dir, self.arch, self.ds = out_dir, arch, ds
        self.model = build_arch(arch, in_channels=ds.in_channels, n_classes=ds.n_classes, activation=activation)
        states = self._stack_runs(
            seed, run_ids, hps, ds.x_train.shape[0], lambda hp, g: init_state(arch, hp, ds.in_channels, ds.n_classes, g)
        )
        self.keys = list(states[0].keys())
        self.params = {k: torch.stack([s[k] for s in states]).contiguous() for k in self.keys}  # M x ...
        self._make_optimiser()
        self.grad_fn = make_vmap_grad(self.model) if engine == "vmap" else None

    def train_epoch(self) -> None:
        """One epoch: per-model minibatch order over its own subset (fresh permutations, cycled)."""
        bs, steps = self.batch_size, self.steps
        order = minibatch_order(self.subsets, self.gens, self.active, steps, bs)  # M x steps x B
        for s in range(steps):
            idx = order[:, s]  # M x B
            x, y = self.ds.x_train[idx], self.ds.y_train[idx]  # M x B x C x H x W, M x B
            if self.grad_fn is None:  # rate 0 is the identity: skip mask generation when no model drops
                drop = self.rates if bool((self.rates > 0).any()) else None
                grads = grouped_grad(self.model.train(), self.params, drop, x, y)
            else:
                self.model.train()
                grads = self.grad_fn(self.params, self.rates, x, y)
            opt_step(self.params, grads, self.opt)

    def save(self, epoch: int) -> None:
        """Write a checkpoint and an index row per finite model; finished or diverged models leave the group."""
        finite = torch.stack([torch.isfinite(p.reshape(p.shape[0], -1)).all(1) for p in self.params.values()]).all(0)  # M
        metrics = evaluate_models(self.model, self.params, self.ds, self.masks[self.active])
        ckpt_dir = self.out_dir / "checkpoints"
        for j, pos in enumerate(self.active):
            if not bool(finite[j]):
                continue
            rid = self.run_ids[pos]
            cid = checkpoint_id(self.arch, self.ds.name, self.seed, rid, epoch)
            state = {k: self.params[k][j] for k in self.keys}
            save_checkpoint(ckpt_dir / f"{cid}.safetensors", state, self.arch, self.ds.name, epoch, rid)
            self.rows.append(self.index_row(cid, self.arch, j, pos, epoch, metrics))
        self.retire(finite, epoch)

    def run(self, save_epochs: tuple[int, ...], on_epoch: Callable[[int], None]) -> GroupResult:
        """Train every model to its own length, saving at ``save_epochs`` and at its last epoch."""
        self.run_epochs(save_epochs, on_epoch)
        return GroupResult(self.rows, self.n_diverged)


def train_group(
    *, out_dir: Path, arch: str, ds: Dataset, seed: int, run_ids: list[int], hps: list[HParams],
    save_epochs: tuple[int, ...], engine: str, on_epoch: Callable[[int], None],
) -> GroupResult:
    """Train one group of runs and write its checkpoints; the caller appends ``rows`` to the index."""
    return GroupTrainer(out_dir, arch, ds, seed, run_ids, hps, engine).run(save_epochs, on_epoch)

