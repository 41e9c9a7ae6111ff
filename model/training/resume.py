"""Per-epoch training state on disk (safetensors + JSON, never pickle), so an interrupted `sne train` resumes."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.sne import SNE


def save_resume(path: Path, model: SNE, opt: torch.optim.Optimizer, info: dict) -> None:
    path.mkdir(parents=True, exist_ok=True)
    sd = opt.state_dict()
    tensors = {f"{pid}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).contiguous() for pid, st in sd["state"].items() for k, v in st.items()}
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors")
    save_file(tensors or {"_empty": torch.zeros(1)}, path / "optim.safetensors")
    (path / "state.json").write_text(json.dumps({**info, "param_groups": sd["param_groups"]}))


def load_resume(path: Path, model: SNE, opt: torch.optim.Optimizer) -> dict | None:
    if not (path / "state.json").exists():
        return None
    info = json.loads((path / "state.json").read_text())
    model.load_state_dict(load_file(path / "model.safetensors"))
    state: dict[int, dict] = {}
    for k, v in load_file(path / "optim.safetensors").items():
        if k == "_empty":
            continue
        pid, name = k.split(".", 1)
        state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": info.pop("param_groups")})
    return info
