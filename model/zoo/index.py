"""The zoo on disk: checkpoint files, the CSV index, zoo.json, and what a resumed run must match.

Output layout (``out_dir``)::

    checkpoints/<id>.safetensors   arch state_dict, float32; metadata arch/dataset/epoch/run_id
    index.csv                      one row per checkpoint, columns INDEX_COLUMNS
    zoo.json                       arch, dataset, description, n_runs, seed, save_epochs, timing

The index is appended atomically after every group, so an interrupted ``generate_zoo`` resumes from it.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from model.zoo.archs import get_spec
from model.zoo.datasets import Dataset
from model.zoo.space import HP_COLUMNS, HParamSpace

ZOO_FORMAT_VERSION = 1
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



def atomic_write_text(path: Path, text: str) -> None:
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


def append_index(path: Path, rows: list[dict[str, Any]]) -> None:
    """Append rows atomically (rewrite to a temp file, then rename): never a half-written index."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    if not old:
        writer.writerow(INDEX_COLUMNS)
    for r in rows:
        writer.writerow([_format_value(r[c]) for c in INDEX_COLUMNS])
    atomic_write_text(path, old + buf.getvalue())


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
    """State dict of one index row (keys and shapes of ``build_arch(row['arch']).state_dict()``)."""
    return load_file(str(Path(zoo_dir) / row["path"]))


def zoo_config(arch: str, dataset: str, ds: Dataset, seed: int, save_epochs: tuple[int, ...], space: HParamSpace) -> dict[str, Any]:
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


IMMUTABLE_KEYS = ("format_version", "arch", "dataset", "image_size", "seed", "save_epochs", "hparam_space")


def check_resumable(out_dir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The existing zoo.json of ``out_dir`` ({} if none); raises if its fixed settings differ from ``config``."""
    path = out_dir / "zoo.json"
    previous: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    for k in IMMUTABLE_KEYS:
        if previous and previous.get(k) != config[k]:
            raise ValueError(f"{out_dir} holds a zoo with {k}={previous.get(k)!r}, not {config[k]!r}")
    return previous


def done_runs(out_dir: Path) -> set[int]:
    """Run ids already in the index: a resumed ``generate_zoo`` skips them."""
    return {r["run_id"] for r in load_index(out_dir)}


def save_checkpoint(path: Path, state: dict[str, Tensor], arch: str, dataset: str, epoch: int, run_id: int) -> None:
    """Write one zoo checkpoint atomically (temp file, then rename), with its provenance as metadata."""
    tensors = {k: v.detach().to(torch.float32).clone().contiguous() for k, v in state.items()}
    meta = {"arch": arch, "dataset": dataset, "epoch": str(epoch), "run_id": str(run_id), "format": "pt"}
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    os.replace(tmp, path)
