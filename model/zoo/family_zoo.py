"""Zoos of the new families (``sne zoo --arch mlp|resnet|transformer``): same files, index and split as
``model.zoo.generate``, with the variant (depth/width) sampled per run next to its hyperparameters.

Runs are grouped by (variant, activation, batch size) and each group trains stacked with the family's
batched forward (``model.zoo.families``); optimizers, hyperparameters, the run split and the index are the
existing zoo's (``model.zoo.optim``, ``space``, ``index``). Resumable like ``generate_zoo``.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.zoo.datasets import Dataset, load_dataset
from model.zoo.engine import init_weight_, minibatch_order
from model.zoo.families import FAMILIES, FORWARDS, VARIANTS, Variant, build_variant
from model.zoo.generate import ZooSummary
from model.zoo.group import StackedGroup
from model.zoo.index import (
    ZOO_FORMAT_VERSION,
    append_index,
    atomic_write_text,
    check_resumable,
    done_runs,
    load_index,
    save_checkpoint,
)
from model.zoo.optim import opt_step
from model.zoo.sequences import VOCAB, load_sequences
from model.zoo.space import (
    DEFAULT_SPACE,
    SPLITS,
    HParams,
    HParamSpace,
    checkpoint_id,
    run_rng,
    sample_hparams,
)

FAMILY_SAVE_EPOCHS: tuple[int, ...] = (0, 1, 2, 4, 8)
DEFAULT_DATASET = {"mlp": "digits", "resnet": "digits", "transformer": "sequences"}


def family_dataset(family: str, dataset: str | None) -> Dataset:
    """The dataset a family trains on: images for mlp/resnet, token sequences for the transformer."""
    name = (dataset or DEFAULT_DATASET[family]).lower()
    if (family == "transformer") != (name == "sequences"):
        raise ValueError(f"family {family!r} cannot train on {name!r} (transformer <-> sequences)")
    return load_sequences() if name == "sequences" else load_dataset(name)


def sample_variant(family: str, run_id: int, seed: int, activation: str) -> Variant:
    """Architecture of run ``run_id``: a pure function of ``(seed, run_id)`` like its hyperparameters."""
    choices = VARIANTS[family]
    v = choices[int(run_rng(seed, run_id, 4).integers(len(choices)))]
    return Variant(v.family, v.depth, v.width, v.heads, activation)


class FamilyGroup(StackedGroup):
    """Models of one variant, activation and batch size, stacked (``M x ...``) and trained together."""

    stacks = ("params", "bufs")  # BatchNorm running statistics retire with their model

    def __init__(self, out_dir: Path, v: Variant, ds: Dataset, seed: int, run_ids: list[int], hps: list[HParams]) -> None:
        self.out_dir, self.v, self.ds = out_dir, v, ds
        self.batch_size = hps[0].batch_size
        self.forward = FORWARDS[v.family]
        tokens = not ds.x_train.is_floating_point()
        size = int(ds.x_train.shape[-1])
        self.module = build_variant(v, 1 if tokens else ds.in_channels, size, ds.n_classes, VOCAB)
        states = self._stack_runs(seed, run_ids, hps, ds.x_train.shape[0], self._init)
        self.pkeys = [k for k, _ in self.module.named_parameters()]
        self.bkeys = [k for k, b in self.module.named_buffers() if b.is_floating_point()]
        self.params = {k: torch.stack([s[k] for s in states]).contiguous() for k in self.pkeys}  # M x ...
        self.bufs = {k: torch.stack([s[k] for s in states]).contiguous() for k in self.bkeys}  # M x ...
        self._make_optimiser()
        self.steps_done = 0

    def _init(self, hp: HParams, gen: torch.Generator) -> dict[str, Tensor]:
        """``hp.init`` for matrices (conv, linear, token embedding), small normal positions, zero biases."""
        state = {k: t.detach().clone() for k, t in self.module.state_dict().items()}
        for k, t in state.items():
            if k == "pos_embed":
                torch.nn.init.normal_(t, std=0.02, generator=gen)
            elif t.dim() >= 2:
                init_weight_(t, hp, gen)
            elif k.endswith("bias"):
                t.zero_()
        return state

    def train_epoch(self) -> None:
        bs, steps = self.batch_size, self.steps
        order = minibatch_order(self.subsets, self.gens, self.active, steps, bs)  # M x steps x B
        drop = self.rates if bool((self.rates > 0).any()) else None
        for s in range(steps):
            idx = order[:, s]  # M x B
            x, y = self.ds.x_train[idx], self.ds.y_train[idx]  # M x B x ..., M x B
            leaves = {k: t.detach().requires_grad_(True) for k, t in self.params.items()}
            logits = self.forward(self.v, leaves, self.bufs, x, drop, True)  # M x B x K
            m, b, k = logits.shape
            loss = F.cross_entropy(logits.reshape(m * b, k), y.reshape(-1), reduction="sum") / b
            grads = dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))
            opt_step(self.params, grads, self.opt)
        self.steps_done += steps

    @torch.no_grad()
    def evaluate(self, chunk: int = 256) -> dict[str, Tensor]:
        """Per-model accuracy and loss on its own training subset and on the test set (eval mode)."""
        def run(x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
            correct, losses = [], []
            for s in range(0, x.shape[0], chunk):
                logits = self.forward(self.v, self.params, self.bufs, x[s : s + chunk], None, False)  # M x b x K
                yy = y[s : s + chunk]
                correct.append((logits.argmax(-1) == yy).float())
                losses.append(F.cross_entropy(logits.transpose(1, 2), yy.expand(logits.shape[0], -1), reduction="none"))
            return torch.cat(correct, 1), torch.cat(losses, 1)

        c_tr, l_tr = run(self.ds.x_train, self.ds.y_train)
        c_te, l_te = run(self.ds.x_test, self.ds.y_test)
        w = self.masks[self.active].float()
        n = w.sum(1).clamp_min(1)
        return {"train_acc": (c_tr * w).sum(1) / n, "train_loss": (l_tr * w).sum(1) / n,
                "test_acc": c_te.mean(1), "test_loss": l_te.nan_to_num(1e4).mean(1)}

    def save(self, epoch: int) -> None:
        """A checkpoint and index row per finite model; finished or diverged models leave the group."""
        every = list(self.params.values()) + list(self.bufs.values())
        finite = torch.stack([torch.isfinite(t.reshape(t.shape[0], -1)).all(1) for t in every]).all(0)  # M
        metrics = self.evaluate()
        for j, pos in enumerate(self.active):
            if not bool(finite[j]):
                continue
            rid = self.run_ids[pos]
            cid = checkpoint_id(self.v.name, self.ds.name, self.seed, rid, epoch)
            state = {k: t[j] for k, t in {**self.params, **self.bufs}.items()}
            for k, b in self.module.named_buffers():
                if not b.is_floating_point():  # BatchNorm's num_batches_tracked
                    state[k] = torch.tensor(self.steps_done, dtype=torch.int64)
            save_checkpoint(self.out_dir / "checkpoints" / f"{cid}.safetensors", state, self.v.name, self.ds.name, epoch, rid)
            self.rows.append(self.index_row(cid, self.v.name, j, pos, epoch, metrics))
        self.retire(finite, epoch)

    def run(self, save_epochs: tuple[int, ...]) -> None:
        self.run_epochs(save_epochs)


def family_config(family: str, ds: Dataset, seed: int, save_epochs: tuple[int, ...], space: HParamSpace) -> dict[str, Any]:
    """zoo.json of a family zoo: the keys of ``model.zoo.index.zoo_config`` plus the family's variants."""
    return {
        "format_version": ZOO_FORMAT_VERSION, "arch": family, "family": family,
        "arch_description": f"{family} family; variants (depth, width) sampled per run",
        "variants": [v.name for v in VARIANTS[family]],
        "dataset": ds.name, "dataset_description": ds.description, "image_size": int(ds.x_train.shape[-1]),
        "in_channels": 1, "n_classes": ds.n_classes, "n_train": int(ds.x_train.shape[0]),
        "n_test": int(ds.x_test.shape[0]), "seed": seed, "save_epochs": list(save_epochs),
        "hparam_space": json.loads(json.dumps(asdict(space))),
        "split_fractions": {"train": 0.7, "val": 0.15, "test": 0.15},
    }


def generate_family_zoo(
    out_dir: Path | str, family: str, dataset: str | None = None, n_runs: int = 120, seed: int = 0,
    save_epochs: tuple[int, ...] = FAMILY_SAVE_EPOCHS, group_size: int = 64, space: HParamSpace = DEFAULT_SPACE,
    threads: int | None = None,
) -> ZooSummary:
    """Train ``n_runs`` models of ``family`` and write (or extend) the zoo in ``out_dir``."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; choose from {FAMILIES}")
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        ds = family_dataset(family, dataset)
        save_epochs = tuple(sorted({int(e) for e in save_epochs}))
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        config = family_config(family, ds, seed, save_epochs, space)
        previous = check_resumable(out_dir, config)
        done = done_runs(out_dir)
        pending = [r for r in range(n_runs) if r not in done]
        hps = {r: sample_hparams(r, seed, save_epochs, space) for r in pending}
        buckets: dict[tuple[str, str, int], list[int]] = {}
        for r in pending:
            v = sample_variant(family, r, seed, hps[r].activation)
            buckets.setdefault((v.name, v.activation, hps[r].batch_size), []).append(r)
        n_diverged = 0
        for (_, activation, _), rids in sorted(buckets.items()):
            v = sample_variant(family, rids[0], seed, activation)
            rids = sorted(rids, key=lambda r: (hps[r].epochs, r))
            for chunk in np.array_split(np.array(rids), math.ceil(len(rids) / group_size)):
                group = [int(r) for r in chunk]
                with torch.random.fork_rng(devices=[]):
                    g = FamilyGroup(out_dir, v, ds, seed, group, [hps[r] for r in group])
                    g.run(save_epochs)
                append_index(out_dir / "index.csv", g.rows)
                n_diverged += g.n_diverged
        wall = time.perf_counter() - t0
        rows = load_index(out_dir)
        body = dict(config)
        body.update(
            n_runs=max(n_runs, int(previous.get("n_runs", 0))), n_runs_done=len({r["run_id"] for r in rows}),
            n_checkpoints=len(rows), n_diverged=int(previous.get("n_diverged", 0)) + n_diverged,
            torch_threads=torch.get_num_threads(), group_size=group_size, wall_seconds=round(wall, 3),
            wall_seconds_total=round(float(previous.get("wall_seconds_total", 0.0)) + wall, 3),
        )
        atomic_write_text(out_dir / "zoo.json", json.dumps(body, indent=2) + "\n")
        split_runs = {s: 0 for s in SPLITS}
        for split in {r["run_id"]: r["split"] for r in rows}.values():
            split_runs[split] += 1
        return ZooSummary(
            out_dir=out_dir, arch=family, dataset=ds.name, n_runs=n_runs, runs_trained=len(pending),
            runs_skipped=n_runs - len(pending), n_checkpoints=len(rows), n_diverged=n_diverged, wall_seconds=wall,
            runs_per_minute=(60.0 * len(pending) / wall) if pending and wall > 0 else 0.0, split_runs=split_runs,
        )
    finally:
        torch.set_num_threads(old_threads)
