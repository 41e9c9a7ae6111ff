"""The labels format: what a user's CSV may hold, the one-line error for each thing it may get wrong, the split."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.labels import (
    LABELS_FILE,
    LabelError,
    assign_splits,
    read_labels,
    write_labels,
    write_zoo_labels,
)
from model.training import load_split
from tests.nets import checkpoint_file


def _csv(tmp: Path, text: str, name: str = "results.csv") -> Path:
    p = tmp / name
    p.write_text(text)
    return p


def test_minimal_file_is_split_by_run_and_keeps_metadata(tmp_path):
    rows = "".join(f"ckpt/r{r}-e{e}.safetensors,{0.1 + 0.01 * r},run{r},{e},0.{r}\n" for r in range(20) for e in range(3))
    p = _csv(tmp_path, "path,accuracy,run,epoch,lr\n" + rows)
    labels = read_labels(p)
    assert len(labels) == 60 and labels[0].path == (tmp_path / "ckpt/r0-e0.safetensors").resolve()
    assert labels[0].meta == {"epoch": "0", "lr": "0.0"} and labels[0].family == "unknown" and labels[0].gap is None
    by_run: dict[str, set[str]] = {}
    for lab in labels:
        by_run.setdefault(lab.run, set()).add(lab.split)
    assert all(len(s) == 1 for s in by_run.values())  # never a run across splits
    counts = {s: sum(1 for v in by_run.values() if s in v) for s in ("train", "val", "test")}
    assert counts == {"train": 14, "val": 3, "test": 3}
    # deterministic and independent of row order
    lines = p.read_text().splitlines()
    q = _csv(tmp_path, "\n".join([lines[0], *reversed(lines[1:])]) + "\n", "reversed.csv")
    assert {lab.path: lab.split for lab in read_labels(q)} == {lab.path: lab.split for lab in labels}


def test_given_split_family_and_gap_are_used(tmp_path):
    p = _csv(tmp_path, "path,accuracy,split,arch,dataset,gap\na.safetensors,0.5,val,mlp,digits,0.1\nb.safetensors,1,train,mlp,digits,-0.02\n")
    a, b = read_labels(p)
    assert (a.split, a.family, a.dataset, a.gap) == ("val", "mlp", "digits", 0.1) and b.accuracy == 1.0 and b.gap == -0.02


@pytest.mark.parametrize(("text", "message"), [
    ("path,acc\na,0.5\n", "missing required column 'accuracy' (columns: path, acc)"),
    ("accuracy\n0.5\n", "missing required column 'path'"),
    ("path,accuracy\na,high\n", "line 2: accuracy 'high' is not a number"),
    ("path,accuracy\na,0.5\nb,87.5\n", "line 3: accuracy 87.5 is outside [0, 1] (give accuracy as a fraction, not a percentage)"),
    ("path,accuracy\na,nan\n", "line 2: accuracy is 'nan', not a finite number"),
    ("path,accuracy\na,0.5\n./a,0.6\n", "'./a' appears twice (lines 2 and 3)"),
    ("path,accuracy\n,0.5\n", "line 2: empty path"),
    ("path,accuracy,split\na,0.5,training\n", "line 2: split 'training' is not one of train, val, test"),
    ("path,accuracy,run,split\na,0.5,r1,train\nb,0.5,r1,val\n", "run 'r1' is in both train and val"),
    ("path,accuracy\na,0.5\nb,0.6\n", "only 2 run(s) to split into train/val/test"),
    ("", "empty file"),
    ("path,accuracy\n", "no rows below the header"),
])
def test_each_bad_file_is_one_line_naming_the_file(tmp_path, text, message):
    p = _csv(tmp_path, text)
    with pytest.raises(LabelError) as e:
        read_labels(p)
    assert message in str(e.value) and str(p) in str(e.value) and "\n" not in str(e.value)


def test_missing_file_and_bare_directory(tmp_path):
    with pytest.raises(LabelError, match="does not exist"):
        read_labels(tmp_path / "nope.csv")
    with pytest.raises(LabelError, match="without labels.csv"):
        read_labels(tmp_path)


def test_too_few_runs_refused_and_three_is_enough():
    with pytest.raises(LabelError, match="at least 3 runs"):
        assign_splits(["a", "b"])
    assert sorted(assign_splits(["a", "b", "c"]).values()) == ["test", "train", "val"]


def test_write_then_read_round_trips_with_relative_paths(tmp_path):
    p = _csv(tmp_path, "path,accuracy,split,family,note\nsub/a.safetensors,0.25,train,cnn,x\nsub/b.safetensors,0.75,test,cnn,y\n")
    labels = read_labels(p)
    out = write_labels(tmp_path / "copy.csv", labels)
    assert "sub/a.safetensors" in out.read_text() and read_labels(out) == labels


def test_zoo_index_and_its_labels_file_read_the_same(tmp_path):
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    header = "id,run_id,arch,dataset,epoch,path,train_acc,test_acc,gap,split\n"
    rows = "".join(f"c{i},{i},arch1,digits,1,checkpoints/c{i}.safetensors,0.9,0.{i},0.0{i},{s}\n"
                   for i, s in enumerate(["train", "train", "val", "test"]))
    (zoo / "index.csv").write_text(header + rows)
    from_index = read_labels(zoo)
    write_zoo_labels(zoo)
    assert (zoo / LABELS_FILE).exists() and read_labels(zoo) == from_index
    assert from_index[1].run == "run1" and from_index[1].family == "arch1" and from_index[1].meta["epoch"] == "1"


def test_unreadable_checkpoints_are_listed_then_skipped_by_flag(tmp_path):
    good = [checkpoint_file(tmp_path, "mlp", seed=s) for s in range(3)]
    (tmp_path / "pickle.safetensors").write_bytes(b"\x80\x04\x95 a pickle")
    rows = "".join(f"{g.name},0.5,train\n" for g in good) + "pickle.safetensors,0.4,train\nmissing.safetensors,0.3,train\n"
    p = _csv(tmp_path, "path,accuracy,split\n" + rows)
    with pytest.raises(LabelError) as e:
        load_split([p], "train", 16)
    msg = str(e.value)
    assert msg.startswith("2 of 5 train checkpoints cannot be read") and "pickle.safetensors" in msg
    assert "missing.safetensors" in msg and "--on-bad-checkpoint skip" in msg and "\n" not in msg
    loaded = load_split([p], "train", 16, on_bad="skip")
    assert len(loaded.examples) == 3 and len(loaded.bad) == 2
    assert all(isinstance(e.state["0.weight"], torch.Tensor) for e in loaded.examples)
