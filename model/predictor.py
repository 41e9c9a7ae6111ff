"""A trained (or explicitly untrained) SNE predictor: weights, card, calibration and OOD reference.

A predictor directory holds `model.safetensors` (SNE weights), `card.json` (config, zoo, splits, metrics,
conformal quantiles, OOD threshold) and `reference.safetensors` (embeddings of the training zoo, for the
out-of-distribution score). The service and `sne encode/gate --local` use it through `predict()`.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from safetensors.torch import load_file, save_file

from model.architecture import SeenArchitecture, Signature, batch_signatures, unseen
from model.checkpoint import Checkpoint
from model.chunking import ChunkedLayer, chunk_checkpoint
from model.config import SNEConfig, get_config
from model.packing import PackedBatch, pack
from model.sne import Encoder, build_encoder

DEFAULT_PREDICTOR_DIR = Path(__file__).parent / "predictors" / "default"
DEFAULT_LEVEL = "0.90"
OOD_K = 5


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


class _CardPart(BaseModel):
    """A section of the card: the fields code reads are typed; whatever else a trainer wrote is kept."""

    model_config = ConfigDict(extra="allow")


class ZooInfo(_CardPart):
    dirs: list[str] = Field(default_factory=list, description="Zoo directories the predictor was trained on.")
    archs: list[str] = Field(default_factory=list)
    datasets: list[str] = Field(default_factory=list)


class Metrics(_CardPart):
    val: dict[str, float | None] = Field(default_factory=dict, description="Kendall tau etc. on the val split.")
    kendall_tau: dict[str, dict[str, float | None]] = Field(
        default_factory=dict,
        description="Per evaluation (in_distribution, cross_dataset, cross_arch), a tau per method (sne and each "
        "baseline by name); null where a method does not apply.",
    )


class Conformal(_CardPart):
    method: str | None = None
    n_calibration: int | None = None
    accuracy: dict[str, float | None] = Field(
        default_factory=dict,
        description="Half-width of the accuracy interval per level; null when infinite (too few calibration points).",
    )
    gap: dict[str, float | None] = Field(default_factory=dict)

    def half_width(self, level: str = "0.90") -> float | None:
        """The accuracy interval's half-width at `level`: None when uncalibrated there, inf when unbounded."""
        if level not in self.accuracy:
            return None
        q = self.accuracy[level]
        return math.inf if q is None else q


class OODInfo(_CardPart):
    method: str | None = None
    k: int = OOD_K
    threshold: float | None = Field(default=None, description="kNN distance beyond which a checkpoint is flagged.")
    quantile: float | None = None
    n_reference: int | None = None
    architectures: list[SeenArchitecture] | None = Field(
        default=None, description="Layer kinds and layer-count ranges seen in training (`model.architecture`); "
        "another architecture is flagged. Null in cards that predate it: no such check.",
    )


class Budgets(_CardPart):
    """The chunk budgets answers are encoded under: above them chunks are sampled (stratified, seeded by the
    file's sha256). A trained card records the defaults; the service shows the `SNE_*` settings in force."""

    layer_chunk_budget: int | None = Field(default=None, description="Chunks encoded per layer (SNE_LAYER_CHUNK_BUDGET).")
    checkpoint_chunk_budget: int | None = Field(
        default=None, description="Chunks encoded per checkpoint (SNE_CHECKPOINT_CHUNK_BUDGET)."
    )
    train_chunks_per_part: int | None = Field(default=None, description="Chunks per part sampled in a training step.")


class PredictorCard(_CardPart):
    """`card.json`, validated once when the predictor is built: what it is, how it was trained and evaluated,
    its calibration and OOD threshold."""

    name: str
    version: str
    trained: bool = False
    created: str | None = None
    note: str | None = None
    config: SNEConfig
    predicts_gap: bool = False
    zoo: ZooInfo = Field(default_factory=ZooInfo)
    splits: dict[str, int | str] = Field(default_factory=dict)
    metrics: Metrics = Field(default_factory=Metrics)
    conformal: Conformal = Field(default_factory=Conformal)
    ood: OODInfo = Field(default_factory=OODInfo)
    budgets: Budgets = Field(default_factory=Budgets)

    @model_validator(mode="before")
    @classmethod
    def _nan_is_null(cls, data: Any) -> Any:
        """NaN (a metric that could not be computed) and inf (an unbounded quantile) are null: the card
        stays strict JSON everywhere."""
        return _finite_or_none(data)

    def updated(self, **changes: object) -> PredictorCard:
        """A copy with `changes` applied, validated like a card read from disk."""
        return PredictorCard.model_validate({**self.model_dump(), **changes})

    def to_json(self) -> str:
        """What `card.json` holds (strict JSON)."""
        return self.model_dump_json(indent=2) + "\n"


@dataclass(frozen=True, eq=False)  # eq=False: arrays have no single truth value
class Prediction:
    """What the predictor says about one checkpoint: the one result type from the forward pass to every
    consumer (worker, cache, service, CLI). Embeddings stay float32 arrays until a response serialises them."""

    embedding: np.ndarray  # [E] float32, the network embedding
    layer_embeddings: np.ndarray  # [L, H] float32, one row per encoded layer, in depth order
    accuracy: float
    gap: float | None  # predicted train-test gap; None without a gap head
    low: float
    high: float
    coverage: float | None  # nominal coverage of [low, high]; None when uncalibrated
    ood_score: float | None  # kNN distance to the training zoo; None without a reference
    ood_flag: bool  # score above the threshold, or an architecture the predictor never saw
    unseen_architecture: bool = False  # layer kinds / count never seen in training (card `ood.architectures`)

    def is_finite(self) -> bool:
        """False when the encoder produced NaN/Inf (extreme weights): such a prediction is never served."""
        scalars = [self.accuracy, self.low, self.high] + [v for v in (self.gap, self.ood_score) if v is not None]
        return (
            all(math.isfinite(v) for v in scalars)
            and bool(np.isfinite(self.embedding).all())
            and bool(np.isfinite(self.layer_embeddings).all())
        )


def knn_score(emb: torch.Tensor, reference: torch.Tensor, k: int = OOD_K) -> torch.Tensor:
    """Mean Euclidean distance to the k nearest reference embeddings (larger = farther from the zoo)."""
    d = torch.cdist(emb.float(), reference.float())
    return d.topk(min(k, reference.shape[0]), largest=False).values.mean(-1)


class Predictor:
    """SNE weights plus what the service needs to answer honestly about them."""

    def __init__(
        self, model: Encoder, card: PredictorCard | dict, reference: torch.Tensor | None = None,
        residuals: torch.Tensor | None = None,
    ) -> None:
        self.model = model.eval()
        self.card = card if isinstance(card, PredictorCard) else PredictorCard.model_validate(card)
        self.reference = reference
        self.residuals = residuals  # [n_reference] |true - pred| of the reference rows: normalised intervals
        self._difficulty: Any = None
        self.device = torch.device("cpu")

    # ----------------------------------------------------------------------------------- identity
    @property
    def config(self) -> SNEConfig:
        return self.model.cfg

    @property
    def name(self) -> str:
        return self.card.name

    @property
    def version(self) -> str:
        return self.card.version

    @property
    def trained(self) -> bool:
        return self.card.trained

    # ----------------------------------------------------------------------------------- load/save
    @classmethod
    def load(cls, path: str | Path | None = None) -> Predictor:
        """The predictor at `path`; with None the shipped default, or an untrained one if none ships."""
        if path is None:
            if not (DEFAULT_PREDICTOR_DIR / "card.json").exists():
                return cls.untrained()
            path = DEFAULT_PREDICTOR_DIR
        path = Path(path)
        card = PredictorCard.model_validate(json.loads((path / "card.json").read_text()))  # json: NaN allowed
        model = build_encoder(card.config)
        model.load_state_dict(load_file(path / "model.safetensors"))
        ref_path = path / "reference.safetensors"
        ref = load_file(ref_path) if ref_path.exists() else {}
        reference = ref["embeddings"].float() if "embeddings" in ref else None
        return cls(model, card, reference, ref["residuals"].float() if "residuals" in ref else None)

    @classmethod
    def untrained(cls, config: str = "small", seed: int = 0) -> Predictor:
        """Randomly initialised weights, labelled as such: predictions carry no information."""
        torch.manual_seed(seed)
        model = build_encoder(get_config(config))
        card = {
            "name": f"sne-{config}-untrained",
            "version": f"untrained-{weights_digest(model)}",
            "trained": False,
            "created": date.today().isoformat(),
            "config": model.cfg,
            "note": "UNTRAINED: random weights; predicted accuracies are meaningless. Train one with `sne train`.",
            "metrics": {},
            "conformal": {},
            "ood": {},
        }
        return cls(model, card)

    def save(self, path: str | Path) -> None:
        """Write the predictor folder, readable by everyone (dir 0755, files 0644) whatever the umask: a
        service container runs as another user and reads it from a mounted volume."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}, path / "model.safetensors")
        written = [path / "model.safetensors", path / "card.json"]
        if self.reference is not None:
            ref = {"embeddings": self.reference.to(torch.float16).contiguous()}
            if self.residuals is not None:
                ref["residuals"] = self.residuals.float().contiguous()
            save_file(ref, path / "reference.safetensors")
            written.append(path / "reference.safetensors")
        (path / "card.json").write_text(self.card.to_json())
        path.chmod(0o755)
        for f in written:
            f.chmod(0o644)

    def to(self, device: str | torch.device) -> Predictor:
        self.device = torch.device(device)
        self.model.to(self.device)
        if self.reference is not None:
            self.reference = self.reference.to(self.device)
        return self

    # ----------------------------------------------------------------------------------- inference
    def chunk(self, ckpt: Checkpoint) -> list[ChunkedLayer]:
        return chunk_checkpoint(ckpt, self.config.chunk_size)

    @torch.no_grad()
    def predict_packed(
        self, batch: PackedBatch, autocast: torch.dtype | None = None, vectors: torch.Tensor | None = None
    ) -> list[Prediction]:
        """Predictions for a packed batch; `vectors`: its parts' chunk-path vectors when already computed
        (`model.overlap.read_with_vectors`)."""
        batch = batch.to(self.device)
        with torch.autocast(self.device.type, dtype=autocast, enabled=autocast is not None):
            out = self.model(batch, None if vectors is None else vectors.to(self.device))
        emb = out.embedding.float()  # [B, E]
        emb_np = emb.cpu().numpy()  # [B, E] float32
        acc = out.accuracy.float().cpu()  # [B]
        gap = out.gap.float().cpu() if self.card.predicts_gap else None  # [B]
        q = self.card.conformal.half_width(DEFAULT_LEVEL)
        half = self.normalized_half_widths(emb)  # [B] or None: then the constant q
        score, flags, new_arch = self.ood(emb, batch_signatures(batch))
        layers = out.layer_embeddings.float().cpu().numpy()  # [sum L, H] float32
        results = []
        for i in range(batch.n_checkpoints):
            a = float(acc[i])
            s = float(score[i]) if score is not None else None
            h = float(half[i]) if half is not None else q
            lo, hi = (max(0.0, a - h), min(1.0, a + h)) if h is not None else (0.0, 1.0)
            start, n = int(batch.ckpt_start[i]), int(batch.ckpt_len[i])
            results.append(
                Prediction(
                    embedding=emb_np[i].copy(),  # [E]
                    layer_embeddings=layers[start : start + n].copy(),  # [L, H]
                    accuracy=a,
                    gap=float(gap[i]) if gap is not None else None,
                    low=lo,
                    high=hi,
                    coverage=float(DEFAULT_LEVEL) if q is not None else None,
                    ood_score=s,
                    ood_flag=flags[i],
                    unseen_architecture=new_arch[i],
                )
            )
        return results

    def ood(self, emb: torch.Tensor, signatures: Sequence[Signature]) -> tuple[torch.Tensor | None, list[bool], list[bool]]:
        """(kNN scores `[B]` or None without a reference, flags, unseen-architecture marks) for embeddings and
        their checkpoints' architectures: flagged when the score is above the card's threshold or the
        architecture was never seen in training. The service and the evaluation table both read it here."""
        threshold, seen = self.card.ood.threshold, self.card.ood.architectures
        score = knn_score(emb, self.reference).cpu() if self.reference is not None else None  # [B]
        new_arch = [seen is not None and unseen(sig, seen) for sig in signatures]
        far = [score is not None and threshold is not None and float(score[i]) > threshold for i in range(len(new_arch))]
        return score, [f or n for f, n in zip(far, new_arch, strict=True)], new_arch

    def normalized_half_widths(self, emb: torch.Tensor) -> np.ndarray | None:
        """Per-checkpoint half-widths ``q * sigma(x)`` of the normalised conformal interval (card
        ``conformal.normalized``), or None when the predictor was not calibrated that way."""
        extra = self.card.conformal.model_extra or {}
        norm = extra.get("normalized") or {}
        q = (norm.get("accuracy") or {}).get(DEFAULT_LEVEL)
        if q is None or self.reference is None or self.residuals is None:
            return None
        if self._difficulty is None:
            # imported here: model.evaluation imports this module
            from model.evaluation.metrics import Difficulty

            self._difficulty = Difficulty.fit(self.reference.cpu().numpy(), self.residuals.cpu().numpy(), k=int(norm["k"]))
        return float(q) * self._difficulty(emb.cpu().numpy())

    def predict(self, checkpoints: Sequence[Checkpoint], autocast: torch.dtype | None = None) -> list[Prediction]:
        """Predictions for parsed checkpoints, all in one packed forward."""
        return self.predict_packed(pack([self.chunk(c) for c in checkpoints]), autocast)


def weights_digest(model: torch.nn.Module) -> str:
    """Short content hash of the weights: the predictor version, so cache keys change with the weights."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]
