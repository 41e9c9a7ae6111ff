"""Real torch networks the tests save as safetensors checkpoints."""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save, save_file
from torch import nn


def arch1() -> nn.Module:
    """Paper Table 3."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(), nn.Conv2d(16, 16, 3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )


def arch2(in_channels: int = 1) -> nn.Module:
    """Paper Tables 4-5."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 5), nn.MaxPool2d(2, 2), nn.ReLU(),
        nn.Conv2d(8, 6, 5), nn.MaxPool2d(2, 2), nn.ReLU(),
        nn.Conv2d(6, 4, 2), nn.ReLU(), nn.Flatten(), nn.Linear(36, 20), nn.ReLU(), nn.Linear(20, 10),
    )


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(64, 100), nn.ReLU(), nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))


def transformer() -> nn.Module:
    layer = nn.TransformerEncoderLayer(d_model=32, nhead=4, dim_feedforward=64, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)


class ResBlock(nn.Module):
    def __init__(self, c: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


def resnet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), ResBlock(), ResBlock(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))


BUILDERS = {"arch1": arch1, "arch2": arch2, "mlp": mlp, "transformer": transformer, "resnet": resnet}


def state(net: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}


def checkpoint_bytes(name: str, seed: int = 0) -> bytes:
    torch.manual_seed(seed)
    return save(state(BUILDERS[name]()))


def checkpoint_file(tmp: Path, name: str, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    p = tmp / f"{name}-{seed}.safetensors"
    save_file(state(BUILDERS[name]()), p)
    return p
