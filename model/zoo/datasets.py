"""Offline grayscale image datasets for the model zoos (no downloads, fixed splits).

* ``digits`` - scikit-learn's bundled handwritten digits (UCI optdigits test part): 1,797
  8x8 images, pixel counts 0..16 scaled to [0, 1]; fixed stratified split (seed 0) into
  1,400 train / 397 test.
* ``shapes`` - a procedural 10-class dataset (see :func:`make_shapes`): line and shape
  patterns rendered at 32x32 with random position, size, thickness, rotation and contrast,
  area-averaged down to 8x8 (the way optdigits was made from 32x32 bitmaps), plus a random
  distractor blob and pixel noise. Deterministic from a fixed seed; 1,800 train / 600 test.
  At 8x8 some classes (square vs disk, frame vs ring, plus vs cross when small) are hard to
  tell apart, so even good models stay well below 100 % and zoo accuracies spread.

Having two datasets with the same image size and class count lets cross-dataset transfer of
accuracy predictors be measured offline. ``size`` resizes bilinearly (e.g. 28 for Arch2).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["DATASETS", "SHAPE_CLASSES", "Dataset", "load_dataset", "make_shapes"]


@dataclass(frozen=True)
class Dataset:
    """A fixed train/test split; images are float32 N x 1 x H x W in [0, 1], labels int64."""

    name: str
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    description: str
    n_classes: int = 10

    @property
    def image_size(self) -> int:
        return int(self.x_train.shape[-1])

    @property
    def in_channels(self) -> int:
        return int(self.x_train.shape[1])


def _digits() -> Dataset:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    x = (bunch.data.astype(np.float32) / 16.0).reshape(-1, 1, 8, 8)
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=397, stratify=y, random_state=0)
    return Dataset(
        name="digits",
        x_train=torch.from_numpy(np.ascontiguousarray(x_tr)),
        y_train=torch.from_numpy(y_tr),
        x_test=torch.from_numpy(np.ascontiguousarray(x_te)),
        y_test=torch.from_numpy(y_te),
        description=(
            "scikit-learn load_digits (UCI optdigits): 1,797 8x8 grayscale handwritten digits, "
            "values/16 in [0,1]; stratified split with random_state=0 into 1,400 train / 397 test"
        ),
    )


SHAPE_CLASSES: tuple[str, ...] = (
    "horizontal bar",
    "vertical bar",
    "diagonal \\",
    "diagonal /",
    "plus",
    "cross x",
    "filled square",
    "square frame",
    "filled disk",
    "ring",
)


def _render_shape(cls: int, rng: np.random.Generator, res: int) -> np.ndarray:
    """Anti-aliased coverage (res x res, [0,1]) of one random instance of class ``cls``."""
    c = (np.arange(res) + 0.5) / res * 2.0 - 1.0  # pixel centres in [-1, 1]
    xx, yy = np.meshgrid(c, c)  # x right, y down
    cx, cy = rng.uniform(-0.35, 0.35, size=2)
    size = rng.uniform(0.35, 0.75)  # half-extent of the shape
    thick = rng.uniform(0.12, 0.28)  # stroke half-width
    angle = rng.normal(0.0, 0.15)  # rotation jitter (radians)
    ca, sa = np.cos(angle), np.sin(angle)
    u = ca * (xx - cx) + sa * (yy - cy)
    v = -sa * (xx - cx) + ca * (yy - cy)

    def seg(du: float, dv: float) -> np.ndarray:
        """Distance to the segment from -(du,dv) to +(du,dv) in the rotated frame."""
        t = np.clip((u * du + v * dv) / (du * du + dv * dv), -1.0, 1.0)
        return np.hypot(u - t * du, v - t * dv)

    r = np.hypot(u, v)
    box = np.maximum(np.abs(u), np.abs(v))
    if cls == 0:
        d = seg(size, 0.0) - thick
    elif cls == 1:
        d = seg(0.0, size) - thick
    elif cls == 2:
        d = seg(size * 0.75, size * 0.75) - thick
    elif cls == 3:
        d = seg(size * 0.75, -size * 0.75) - thick
    elif cls == 4:
        d = np.minimum(seg(size, 0.0), seg(0.0, size)) - thick
    elif cls == 5:
        k = size * 0.75
        d = np.minimum(seg(k, k), seg(k, -k)) - thick
    elif cls == 6:
        d = box - size * 0.8
    elif cls == 7:
        d = np.abs(box - size * 0.8) - thick * 0.7
    elif cls == 8:
        d = r - size * 0.9
    elif cls == 9:
        d = np.abs(r - size * 0.9) - thick * 0.7
    else:  # pragma: no cover - guarded by caller
        raise ValueError(cls)
    soft = 1.5 / res  # edge softness ~ 1.5 high-res pixels
    return np.clip(0.5 - d / (2 * soft), 0.0, 1.0)


def make_shapes(n: int, seed: int, out_size: int = 8, res: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Generate ``n`` procedural shape images (balanced classes) deterministically from ``seed``.

    Each image: one of 10 patterns (:data:`SHAPE_CLASSES`) drawn as a signed-distance shape at
    ``res`` x ``res`` with random centre (+-0.35 of the half-width), size, stroke width and
    rotation jitter (sd 0.15 rad), scaled by a random contrast in [0.5, 1]; a random Gaussian
    distractor blob (amplitude up to 0.4) is added; the image is area-averaged to
    ``out_size`` x ``out_size``, Gaussian pixel noise (sd 0.06) is added and values are clipped
    to [0, 1]. Returns float32 images N x 1 x out_size x out_size and int64 labels.
    """
    if res % out_size:
        raise ValueError("res must be a multiple of out_size")
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 10
    rng.shuffle(labels)
    imgs = np.empty((n, res, res), dtype=np.float64)
    c = (np.arange(res) + 0.5) / res * 2.0 - 1.0
    xx, yy = np.meshgrid(c, c)
    for i, cls in enumerate(labels):
        img = _render_shape(int(cls), rng, res) * rng.uniform(0.5, 1.0)
        bx, by = rng.uniform(-0.9, 0.9, size=2)
        bs = rng.uniform(0.08, 0.25)
        img = img + rng.uniform(0.0, 0.4) * np.exp(-((xx - bx) ** 2 + (yy - by) ** 2) / (2 * bs * bs))
        imgs[i] = img
    f = res // out_size
    small = imgs.reshape(n, out_size, f, out_size, f).mean(axis=(2, 4))
    small = small + rng.normal(0.0, 0.06, size=small.shape)
    small = np.clip(small, 0.0, 1.0).astype(np.float32)
    return small[:, None], labels


SHAPES_SEED = 20240601
SHAPES_N_TRAIN = 1800
SHAPES_N_TEST = 600


def _shapes() -> Dataset:
    x, y = make_shapes(SHAPES_N_TRAIN + SHAPES_N_TEST, seed=SHAPES_SEED)
    n = SHAPES_N_TRAIN
    return Dataset(
        name="shapes",
        x_train=torch.from_numpy(np.ascontiguousarray(x[:n])),
        y_train=torch.from_numpy(y[:n]),
        x_test=torch.from_numpy(np.ascontiguousarray(x[n:])),
        y_test=torch.from_numpy(y[n:]),
        description=(
            "procedural 'shapes' (model.zoo.datasets.make_shapes, seed "
            f"{SHAPES_SEED}): 10 classes ({', '.join(SHAPE_CLASSES)}) drawn as anti-aliased "
            "signed-distance shapes at 32x32 with random position, size, stroke width, rotation "
            "jitter and contrast, plus a random Gaussian distractor blob; area-averaged to 8x8, "
            "Gaussian pixel noise sd 0.06, clipped to [0,1]; "
            f"{SHAPES_N_TRAIN} train / {SHAPES_N_TEST} test"
        ),
    )


DATASETS: dict[str, Callable[[], Dataset]] = {"digits": _digits, "shapes": _shapes}


@lru_cache(maxsize=16)
def _load_cached(name: str, size: int | None) -> Dataset:
    try:
        base = DATASETS[name]()
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose from {sorted(DATASETS)}") from None
    if size is None or size == base.image_size:
        return base

    def rs(x: Tensor) -> Tensor:
        return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).contiguous()

    return replace(
        base,
        x_train=rs(base.x_train),
        x_test=rs(base.x_test),
        description=f"{base.description}; resized bilinearly to {size}x{size}",
    )


def load_dataset(name: str, size: int | None = None) -> Dataset:
    """Load a registered dataset (cached; treat the tensors as read-only), optionally resized."""
    return _load_cached(name.lower(), size)
