"""Model-zoo generator: the training data of SNE (``sne zoo``).

Many small CNNs (``model.zoo.archs``) are trained at once on an offline dataset (``model.zoo.datasets``),
each with its own hyperparameters (``model.zoo.space``), in groups of ~100 runs sharing activation and
batch size (``model.zoo.group``, ``model.zoo.engine``); checkpoints are saved at several epochs so that
accuracies run from chance to the best, and listed in the zoo's index (``model.zoo.index``).

Resumable: the index is appended atomically after every group; a rerun with the same arguments skips
every run already in the index (a larger ``n_runs`` extends the zoo - the hyperparameters and split of
run ``i`` depend only on ``(seed, i)``).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.zoo.archs import get_spec
from model.zoo.datasets import load_dataset
from model.zoo.engine import ENGINES
from model.zoo.group import train_group
from model.zoo.index import (
    append_index,
    atomic_write_text,
    check_resumable,
    done_runs,
    load_index,
    zoo_config,
)
from model.zoo.space import (
    DEFAULT_SAVE_EPOCHS,
    DEFAULT_SPACE,
    SPLITS,
    HParams,
    HParamSpace,
    sample_hparams,
)


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
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}")
    old_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        spec = get_spec(arch)
        ds = load_dataset(dataset, spec.input_size)
        (out_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        cfg_path = out_dir / "zoo.json"
        config = zoo_config(arch, dataset, ds, seed, save_epochs, space)
        previous = check_resumable(out_dir, config)

        index_path = out_dir / "index.csv"
        done = done_runs(out_dir)
        hps = {rid: sample_hparams(rid, seed, save_epochs, space) for rid in range(n_runs)}
        pending = [rid for rid in range(n_runs) if rid not in done]
        groups = _group_runs(pending, hps, group_size)
        total_model_epochs = sum(hps[r].epochs for r in pending)
        wall_before = float(previous.get("wall_seconds_total", 0.0))

        def write_config(wall_this_call: float, n_diverged: int) -> None:
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
            atomic_write_text(cfg_path, json.dumps(body, indent=2) + "\n")

        n_diverged = 0
        trained = 0
        with _progress(progress, total_model_epochs, f"zoo {arch}/{dataset}") as advance:
            for group in groups:
                with torch.random.fork_rng(devices=[]):  # dropout seeding must not leak
                    res = train_group(
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
                append_index(index_path, res.rows)
                n_diverged += res.n_diverged
                trained += len(group)
                write_config(time.perf_counter() - t0, n_diverged)
        wall = time.perf_counter() - t0
        write_config(wall, n_diverged)
        rows = load_index(out_dir)
        split_runs: dict[str, int] = {s: 0 for s in SPLITS}
        for split in {r["run_id"]: r["split"] for r in rows}.values():  # one split per run
            split_runs[split] += 1
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
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

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
