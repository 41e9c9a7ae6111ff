"""The zoo's hyperparameter space: sampling, the run split and checkpoint ids.

Hyperparameters are sampled as in Unterthiner et al. (2020), Appendix A.2 (ranges reshaped so that
accuracies spread, see :data:`DEFAULT_SPACE`). Everything about run ``i`` is a pure function of
``(seed, i)``, so a larger zoo extends a smaller one and a resumed zoo equals an uninterrupted one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

DEFAULT_SAVE_EPOCHS: tuple[int, ...] = (0, 1, 2, 4, 8, 12)
SPLITS: tuple[str, ...] = ("train", "val", "test")
OPTIMIZERS: tuple[str, ...] = ("sgd", "adam", "rmsprop")
INITS: tuple[str, ...] = (
    "xavier_normal",
    "xavier_uniform",
    "he_normal",
    "he_uniform",
    "orthogonal",
    "normal",
    "trunc_normal",
)
#: inits whose ``init_scale`` is an absolute standard deviation (Unterthiner's RandomNormal /
#: TruncatedNormal); for the others it multiplies the fan-based gain.
STD_INITS: frozenset[str] = frozenset({"normal", "trunc_normal"})

HP_COLUMNS: tuple[str, ...] = (
    "hp_optimizer",
    "hp_lr",
    "hp_init",
    "hp_init_scale",
    "hp_l2",
    "hp_dropout",
    "hp_activation",
    "hp_batch_size",
    "hp_train_fraction",
    "hp_epochs",
)


@dataclass(frozen=True)
class HParamSpace:
    """Sampling ranges (Unterthiner et al. 2020, A.2, reshaped for small zoos on tiny data).

    Learning rates are log-uniform per optimizer: one shared range such as [1e-4, 1e-1] left
    about half of an SGD zoo at chance after 10 epochs, so each optimizer gets the range over
    which its accuracy goes from poor to best. Training length is one of the save epochs >= 2.
    """

    optimizers: tuple[str, ...] = OPTIMIZERS
    lr_range: tuple[tuple[str, float, float], ...] = (
        ("sgd", 3e-3, 3e-1),
        ("adam", 2e-4, 2e-2),
        ("rmsprop", 1e-4, 1e-2),
    )
    inits: tuple[str, ...] = INITS
    gain_range: tuple[float, float] = (0.5, 2.0)  # log-uniform multiplier of fan-based inits
    std_range: tuple[float, float] = (1e-2, 0.5)  # log-uniform std of normal / trunc_normal
    l2_range: tuple[float, float] = (1e-8, 1e-2)  # log-uniform weight-decay coefficient
    dropout_range: tuple[float, float] = (0.0, 0.5)  # uniform; 0 with probability p_no_dropout
    p_no_dropout: float = 0.3
    activations: tuple[str, ...] = ("relu", "tanh", "gelu")
    batch_sizes: tuple[int, ...] = (32, 64, 128)
    train_fraction_range: tuple[float, float] = (0.1, 1.0)  # uniform
    min_epochs: int = 2  # training length: uniform over save epochs >= min_epochs

    def lr_bounds(self, optimizer: str) -> tuple[float, float]:
        for name, lo, hi in self.lr_range:
            if name == optimizer:
                return lo, hi
        raise ValueError(f"no learning-rate range for optimizer {optimizer!r}")


DEFAULT_SPACE = HParamSpace()


@dataclass(frozen=True)
class HParams:
    """Hyperparameters of one training run."""

    optimizer: str
    lr: float
    init: str
    init_scale: float
    l2: float
    dropout: float
    activation: str
    batch_size: int
    train_fraction: float
    epochs: int

    def as_row(self) -> dict[str, Any]:
        """Index columns ``hp_*``."""
        return {f"hp_{k}": v for k, v in asdict(self).items()}


def run_rng(seed: int, run_id: int, stream: int) -> np.random.Generator:
    """Independent random stream per (seed, run, purpose): results do not depend on n_runs."""
    return np.random.default_rng([int(seed), int(run_id), int(stream)])


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def sample_hparams(
    run_id: int, seed: int, save_epochs: Sequence[int] = DEFAULT_SAVE_EPOCHS, space: HParamSpace = DEFAULT_SPACE
) -> HParams:
    """Hyperparameters of run ``run_id``, a pure function of ``(seed, run_id)``."""
    rng = run_rng(seed, run_id, 0)
    optimizer = str(rng.choice(space.optimizers))
    lr = _loguniform(rng, *space.lr_bounds(optimizer))
    init = str(rng.choice(space.inits))
    scale_range = space.std_range if init in STD_INITS else space.gain_range
    init_scale = _loguniform(rng, *scale_range)
    l2 = _loguniform(rng, *space.l2_range)
    use_dropout = rng.uniform() >= space.p_no_dropout
    dropout_draw = float(rng.uniform(*space.dropout_range))
    activation = str(rng.choice(space.activations))
    batch_size = int(rng.choice(space.batch_sizes))
    train_fraction = float(rng.uniform(*space.train_fraction_range))
    lengths = [e for e in save_epochs if e >= space.min_epochs] or [max(save_epochs)]
    epochs = int(rng.choice(lengths))
    return HParams(
        optimizer=optimizer,
        lr=lr,
        init=init,
        init_scale=init_scale,
        l2=l2,
        dropout=dropout_draw if use_dropout else 0.0,
        activation=activation,
        batch_size=batch_size,
        train_fraction=train_fraction,
        epochs=epochs,
    )


def split_for_run(run_id: int, seed: int, fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), block: int = 20) -> str:
    """Split of a training run: exact 70/15/15 proportions within every block of 20 run ids.

    Deterministic from ``(seed, run_id // block)`` and independent of the zoo size; all
    checkpoints of a run share its split, so no run is ever in two splits.
    """
    counts = [round(f * block) for f in fractions]
    counts[0] = block - sum(counts[1:])
    labels = np.repeat(np.arange(3), counts)
    perm = np.random.default_rng([int(seed), int(run_id) // block, 7919]).permutation(labels)
    return SPLITS[int(perm[run_id % block])]


def checkpoint_id(arch: str, dataset: str, seed: int, run_id: int, epoch: int) -> str:
    """Unique id of a checkpoint, also across zoos of other arch/dataset/seed."""
    return f"{arch}_{dataset}_s{seed}_r{run_id:05d}_e{epoch:03d}"
