"""Architectures of the model zoos (SNE paper, Appendix C, Tables 3-5).

The zoo generator trains these modules with ``torch.func.functional_call`` and the encoder
reads their ``state_dict()``; keys are plain PyTorch names (``features.0.weight``,
``classifier.weight``) so checkpoints load with ``load_state_dict(strict=True)``.

Each architecture also describes its *hidden-unit chain* (:class:`ArchSpec`): the ordered
conv/linear layers and, for every boundary between two of them, how many input features of
the next layer belong to one output channel of the previous one. That is all that is needed
to permute hidden units without changing the network's function (``model.zoo.permute``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = [
    "ACTIVATIONS",
    "ARCHS",
    "ARCH_SPECS",
    "Arch1",
    "Arch2",
    "ArchSpec",
    "LayerSpec",
    "RateDropout",
    "build_arch",
    "get_spec",
    "make_activation",
]

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leaky_relu": lambda: nn.LeakyReLU(0.1),
    "elu": nn.ELU,
    "sigmoid": nn.Sigmoid,
}


def make_activation(name: str) -> nn.Module:
    """Activation module by name; elementwise, so it commutes with unit permutations."""
    try:
        return ACTIVATIONS[name]()
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}") from None


class RateDropout(nn.Module):
    """Dropout whose rate is a (non-persistent) tensor buffer instead of a Python float.

    Why: the zoo trains ~100 models at once with ``vmap`` and each model has its own dropout
    rate; ``functional_call`` can swap in a per-model ``rate`` tensor. The buffer is not
    persistent, so it never appears in ``state_dict()`` (checkpoints hold only weights).
    A rate of 0 is an exact identity; in eval mode it is always the identity.
    """

    rate: Tensor  # () buffer: functional_call / vmap swap in one rate per model

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1), got {p}")
        self.register_buffer("rate", torch.tensor(float(p)), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        keep = 1.0 - self.rate
        mask = torch.rand_like(x) < keep
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={float(self.rate):.3g}"


@dataclass(frozen=True)
class LayerSpec:
    """One conv/linear layer of the hidden-unit chain, by its state_dict keys."""

    weight: str
    bias: str


@dataclass(frozen=True)
class ArchSpec:
    """Hidden-unit chain of an architecture.

    ``layers`` are the conv/linear layers in forward order; the last one is the output layer,
    whose units (classes) must never be permuted. ``inputs_per_channel[i]`` says how many
    consecutive input features of ``layers[i + 1]`` belong to one output channel of
    ``layers[i]`` (1 for conv->conv and conv->global-pool->linear; H*W after a flatten).
    """

    name: str
    layers: tuple[LayerSpec, ...]
    inputs_per_channel: tuple[int, ...]
    input_size: int | None  # required square input side, None = any size
    description: str

    @property
    def n_hidden(self) -> int:
        """Number of layers whose output units may be permuted (all but the output layer)."""
        return len(self.layers) - 1


class Arch1(nn.Module):
    """Arch1 (Table 3; the Unterthiner et al. CNN): 3x conv3x3(16), global average pool, linear.

    Works on any input size >= 7x7 because global pooling removes the spatial extent, so the
    8x8 digits and 28x28 images give the same weight shapes (4,970 parameters for 1 channel).
    """

    def __init__(
        self, in_channels: int = 1, n_classes: int = 10, activation: str = "relu", dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.activation = activation
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, kernel_size=3),  # 0
            make_activation(activation),  # 1
            RateDropout(dropout),  # 2
            nn.Conv2d(16, 16, kernel_size=3),  # 3
            make_activation(activation),  # 4
            RateDropout(dropout),  # 5
            nn.Conv2d(16, 16, kernel_size=3),  # 6
            make_activation(activation),  # 7
            RateDropout(dropout),  # 8
            nn.AdaptiveAvgPool2d(1),  # 9
            nn.Flatten(),  # 10
        )
        self.classifier = nn.Linear(16, n_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


class Arch2(nn.Module):
    """Arch2 (Tables 4-5): conv5(8)-pool-conv5(6)-pool-conv2(4), flatten 36, linear 20, linear.

    Expects 28x28 inputs (the flatten after conv3 fixes the spatial size to 3x3), so 8x8
    datasets are resized with ``load_dataset(name, size=28)``. Activation after each pool as
    in the paper's table (max-pool and elementwise activations commute anyway for ReLU).
    """

    def __init__(
        self, in_channels: int = 1, n_classes: int = 10, activation: str = "relu", dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.activation = activation
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 8, kernel_size=5),  # 0: 8x24x24
            nn.MaxPool2d(2, 2),  # 1: 8x12x12
            make_activation(activation),  # 2
            RateDropout(dropout),  # 3
            nn.Conv2d(8, 6, kernel_size=5),  # 4: 6x8x8
            nn.MaxPool2d(2, 2),  # 5: 6x4x4
            make_activation(activation),  # 6
            RateDropout(dropout),  # 7
            nn.Conv2d(6, 4, kernel_size=2),  # 8: 4x3x3
            make_activation(activation),  # 9
            RateDropout(dropout),  # 10
            nn.Flatten(),  # 11: 36
        )
        self.classifier = nn.Sequential(
            nn.Linear(36, 20),  # 0
            make_activation(activation),  # 1
            RateDropout(dropout),  # 2
            nn.Linear(20, n_classes),  # 3
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


ARCHS: dict[str, type[nn.Module]] = {"arch1": Arch1, "arch2": Arch2}

ARCH_SPECS: dict[str, ArchSpec] = {
    "arch1": ArchSpec(
        name="arch1",
        layers=(
            LayerSpec("features.0.weight", "features.0.bias"),
            LayerSpec("features.3.weight", "features.3.bias"),
            LayerSpec("features.6.weight", "features.6.bias"),
            LayerSpec("classifier.weight", "classifier.bias"),
        ),
        inputs_per_channel=(1, 1, 1),  # conv3 -> global avg pool -> linear: 1 input per channel
        input_size=None,
        description="Arch1 (SNE Table 3): conv3x3(16)-conv3x3(16)-conv3x3(16)-global avg pool-linear",
    ),
    "arch2": ArchSpec(
        name="arch2",
        layers=(
            LayerSpec("features.0.weight", "features.0.bias"),
            LayerSpec("features.4.weight", "features.4.bias"),
            LayerSpec("features.8.weight", "features.8.bias"),
            LayerSpec("classifier.0.weight", "classifier.0.bias"),
            LayerSpec("classifier.3.weight", "classifier.3.bias"),
        ),
        inputs_per_channel=(1, 1, 9, 1),  # conv3 (4 ch, 3x3) -> flatten: 9 consecutive inputs/channel
        input_size=28,
        description=(
            "Arch2 (SNE Tables 4-5): conv5x5(8)-maxpool-conv5x5(6)-maxpool-conv2x2(4)-flatten(36)"
            "-linear(20)-linear, 28x28 input"
        ),
    ),
}


def get_spec(name: str) -> ArchSpec:
    """Hidden-unit chain of a registered architecture."""
    if name.lower() in ARCH_SPECS:
        return ARCH_SPECS[name.lower()]
    if name.lower().startswith("mlp-"):  # MLP variants of the family zoos (model.zoo.families)
        from model.zoo.families import get_variant, mlp_spec

        return mlp_spec(get_variant(name.lower()))
    raise ValueError(f"unknown architecture {name!r}; choose from {sorted(ARCHS)}")


def build_arch(name: str, **kw: object) -> nn.Module:
    """Instantiate a registered architecture by name (``arch1`` / ``arch2``)."""
    try:
        cls = ARCHS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; choose from {sorted(ARCHS)}") from None
    return cls(**kw)
