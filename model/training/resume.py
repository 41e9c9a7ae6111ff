"""Per-epoch training state on disk (safetensors + JSON, never pickle), so an interrupted `sne train` resumes."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.optim.swa_utils import AveragedModel

from model.sne import SNE


def save_resume(
    path: Path, model: SNE, opt: torch.optim.Optimizer, info: dict, average: AveragedModel | None = None,
) -> None:
    """The epoch's weights, optimizer state and weight average; `state.json` last, as it says the epoch is done."""
    path.mkdir(parents=True, exist_ok=True)
    if average is not None:
        save_file({k: v.contiguous() for k, v in average.state_dict().items()}, path / "ema.safetensors")
    sd = opt.state_dict()
    tensors = {f"{pid}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).contiguous() for pid, st in sd["state"].items() for k, v in st.items()}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors")
    save_file(tensors or {"_empty": torch.zeros(1)}, path / "optim.safetensors")
    (path / "state.json").write_text(json.dumps({**info, "param_groups": sd["param_groups"]}))


def load_resume(
    path: Path, model: SNE, opt: torch.optim.Optimizer, average: AveragedModel | None = None,
) -> dict | None:
    """Restore what `save_resume` wrote into `model`, `opt` and `average`; None when there is nothing to resume."""
    if not (path / "state.json").exists():
        return None
    info = json.loads((path / "state.json").read_text())
    model.load_state_dict(load_file(path / "model.safetensors"))
    if average is not None:
        average.load_state_dict(load_file(path / "ema.safetensors"))
    state: dict[int, dict] = {}
    for k, v in load_file(path / "optim.safetensors").items():
        if k == "_empty":
            continue
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": info.pop("param_groups")})
    return info
