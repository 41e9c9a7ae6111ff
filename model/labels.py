"""Checkpoint labels: the one format `sne train` and `sne eval` read and `sne zoo` writes.

A CSV file with a header row and one row per checkpoint:

- ``path`` (required): the ``.safetensors`` file, relative to the CSV file's folder (or absolute);
- ``accuracy`` (required): the measured test accuracy, a fraction in [0, 1];
- ``run`` or ``group`` (optional): checkpoints of one run (epochs of one training run, one seed...) always land
  in the same split, so the validation split never holds a sibling of a training checkpoint;
- ``split`` (optional): ``train``, ``val`` or ``test``. Without it, runs are split 70/15/15 by a hash of their
  name (deterministic, independent of row order);
- ``family`` or ``arch``, ``dataset`` (optional): what the checkpoint is, for cards and evaluation tables;
- ``gap`` (optional): the train-test accuracy gap, a second target;
- any other column is kept as metadata.

A zoo directory is read through its ``labels.csv`` (``sne zoo`` writes it); a zoo generated before that file
existed is read from its ``index.csv``, converted to the same rows.
"""
from __future__ import annotations

import csv
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "LABELS_FILE", "Label", "LabelError", "assign_splits", "labels_rows", "read_labels", "write_labels",
    "write_zoo_labels",
]

LABELS_FILE = "labels.csv"
REQUIRED = ("path", "accuracy")
SPLITS = ("train", "val", "test")
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
# columns the format names; everything else is metadata
_KNOWN = frozenset({"path", "accuracy", "run", "group", "split", "family", "arch", "dataset", "gap"})
_FIRST = ("path", "accuracy", "run", "split", "family", "dataset", "gap")


class LabelError(ValueError):
    """A labels file that cannot be used, said in one line that names the file (and the row)."""


@dataclass(frozen=True)
class Label:
    """One checkpoint with its measured accuracy and where it belongs."""

    path: Path  # absolute
    accuracy: float
    split: str  # train | val | test
    run: str  # checkpoints of one run share a split
    family: str = "unknown"
    dataset: str = "unknown"
    gap: float | None = None
    meta: dict[str, str] = field(default_factory=dict)


def _number(text: str, what: str, where: str, low: float, high: float) -> float:
    try:
        x = float(text)
    except ValueError:
        raise LabelError(f"{where}: {what} {text!r} is not a number") from None
    if not math.isfinite(x):
        raise LabelError(f"{where}: {what} is {text!r}, not a finite number")
    if not low <= x <= high:
        hint = " (give accuracy as a fraction, not a percentage)" if what == "accuracy" and x > 1 else ""
        raise LabelError(f"{where}: {what} {x:g} is outside [{low:g}, {high:g}]{hint}")
    return x


def _read_csv(path: Path) -> list[dict[str, Any]]:
    """Raw rows of a labels CSV, validated; ``split`` left empty where the file gives none."""
    if not path.exists():
        raise LabelError(f"labels file {path} does not exist")
    if not path.is_file():
        raise LabelError(f"{path} is not a file (give a labels CSV, or a zoo directory)")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            raw = list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise LabelError(f"{path}: not a readable CSV file ({e})") from None
    if not header:
        raise LabelError(f"{path}: empty file; expected a header row with at least the columns path, accuracy")
    for col in REQUIRED:
        if col not in header:
            raise LabelError(f"{path}: missing required column {col!r} (columns: {', '.join(header)})")
    if not raw:
        raise LabelError(f"{path}: no rows below the header")
    has_split = "split" in header
    seen: dict[Path, int] = {}
    rows = []
    for line, r in enumerate(raw, start=2):
        r = {(k or "").strip(): (v or "").strip() for k, v in r.items() if k is not None}
        where = f"{path} line {line}"
        if not r.get("path"):
            raise LabelError(f"{where}: empty path")
        p = Path(r["path"])
        p = (p if p.is_absolute() else path.parent / p).resolve()
        if p in seen:
            raise LabelError(f"{path}: {r['path']!r} appears twice (lines {seen[p]} and {line}); one row per checkpoint")
        seen[p] = line
        split = r.get("split", "")
        if has_split and split not in SPLITS:
            raise LabelError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)} (or drop the column to split by run)")
        rows.append({
            "path": p,
            "accuracy": _number(r["accuracy"], "accuracy", where, 0.0, 1.0),
            "split": split,
            "run": r.get("run") or r.get("group") or r["path"],
            "family": r.get("family") or r.get("arch") or "unknown",
            "dataset": r.get("dataset") or "unknown",
            "gap": _number(r["gap"], "gap", where, -1.0, 1.0) if r.get("gap") else None,
            "meta": {k: v for k, v in r.items() if k not in _KNOWN},
        })
    return rows


def assign_splits(runs: Sequence[str], seed: int = 0, source: str = "labels") -> dict[str, str]:
    """Split by run, 70/15/15, each run in exactly one split; deterministic in (seed, run names)."""
    names = sorted(set(runs), key=lambda r: hashlib.sha256(f"{seed}:{r}".encode()).hexdigest())
    n = len(names)
    if n < 3:
        raise LabelError(
            f"{source}: only {n} run(s) to split into train/val/test; give at least 3 runs (more checkpoints), "
            "or a split column"
        )
    n_val = max(1, round(n * FRACTIONS["val"]))
    n_test = max(1, round(n * FRACTIONS["test"]))
    if n - n_val - n_test < 1:
        n_test -= 1  # n == 3 with rounding up: keep one run for training
    out = {r: "val" for r in names[:n_val]}
    out.update({r: "test" for r in names[n_val : n_val + n_test]})
    out.update({r: "train" for r in names[n_val + n_test :]})
    return out


def _check_runs_in_one_split(rows: list[dict[str, Any]], source: Path) -> None:
    where: dict[str, str] = {}
    for r in rows:
        if where.setdefault(r["run"], r["split"]) != r["split"]:
            raise LabelError(
                f"{source}: run {r['run']!r} is in both {where[r['run']]} and {r['split']}; a run's checkpoints must share a split"
            )


def read_labels(source: Path | str, seed: int = 0) -> list[Label]:
    """Every checkpoint of a labels CSV (or a zoo directory), with its split; raises ``LabelError``."""
    source = Path(source)
    if source.is_dir():
        if (source / LABELS_FILE).exists():
            source = source / LABELS_FILE
        elif (source / "index.csv").exists():
            return [_from_index(source, r) for r in _index_rows(source)]
        else:
            raise LabelError(f"{source} is a directory without {LABELS_FILE} (or a zoo's index.csv)")
    rows = _read_csv(source)
    if rows[0]["split"]:
        _check_runs_in_one_split(rows, source)
    else:
        splits = assign_splits([r["run"] for r in rows], seed, str(source))
        for r in rows:
            r["split"] = splits[r["run"]]
    return [Label(**r) for r in rows]


# ------------------------------------------------------------------------------- zoo index -> labels


def _index_rows(zoo: Path) -> list[dict[str, Any]]:
    from model.zoo.index import load_index

    return load_index(zoo)


def _from_index(zoo: Path, r: dict[str, Any]) -> Label:
    skip = {"path", "test_acc", "run_id", "split", "arch", "dataset", "gap"}
    return Label(
        path=(zoo / r["path"]).resolve(), accuracy=float(r["test_acc"]), split=r["split"], run=f"run{r['run_id']}",
        family=r["arch"], dataset=r["dataset"], gap=float(r["gap"]),
        meta={k: str(v) for k, v in r.items() if k not in skip},
    )


def labels_rows(labels: Sequence[Label], base: Path) -> list[dict[str, str]]:
    """CSV rows of labels, paths relative to ``base`` (the CSV's folder) where they lie below it."""
    out = []
    for lab in labels:
        try:
            path = lab.path.relative_to(base.resolve()).as_posix()
        except ValueError:
            path = str(lab.path)
        out.append({
            "path": path, "accuracy": repr(lab.accuracy), "run": lab.run, "split": lab.split, "family": lab.family,
            "dataset": lab.dataset, "gap": "" if lab.gap is None else repr(lab.gap), **lab.meta,
        })
    return out


def write_labels(path: Path, labels: Sequence[Label]) -> Path:
    """Write labels as the CSV this module reads (atomically: temp file, then rename)."""
    rows = labels_rows(labels, path.parent)
    extra = sorted({k for r in rows for k in r} - set(_FIRST))
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*_FIRST, *extra], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    tmp.replace(path)
    return path


def write_zoo_labels(zoo: Path) -> Path:
    """``labels.csv`` beside a zoo's ``index.csv``: the zoo in the format users bring their own checkpoints in."""
    labels = [_from_index(zoo, r) for r in _index_rows(zoo)]
    return write_labels(zoo / LABELS_FILE, labels)
