"""The SNE configuration: one object, with the paper's sizes (Table 7) and a small CPU-trainable one."""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class SNEConfig(BaseModel):
    """Sizes of the encoder and its predictor heads; saved in every predictor card."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "paper"
    chunk_size: int = Field(32, ge=1, description="c: elements per chunk (a set)")
    hidden: int = Field(512, ge=4, description="width h of every set block")
    encoding: int = Field(1024, ge=4, description="network encoding size (PMA seed size of the last pool)")
    heads: int = Field(4, ge=1)
    sab_blocks: int = Field(2, ge=1, description="SABs in the chunk, layer and network encoders")
    isab_blocks: int = Field(2, ge=1, description="ISABs in the part encoder (chunks -> part)")
    inducing: int = Field(32, ge=1, description="inducing points per ISAB: the part encoder costs O(chunks x this)")
    layer_norm: bool = Field(False, description="LayerNorm inside MABs (Table 7: False)")
    head_hidden: int = Field(1000, ge=1, description="width of the predictor MLP (Table 8: 1000)")
    use_chunks: bool = Field(True, description="encode the weights chunk by chunk (the SNE part vector)")
    use_stats: bool = Field(True, description="add a learned projection of each part's exact statistics")
    stats_view: Literal["raw", "relative"] = Field(
        "raw", description="statistics as computed, or with the part's shape divided out (model.stats.relative_view)"
    )
    stats_encoding: Literal["standard", "ple"] = Field(
        "standard", description="statistics standardised (mean/std), or piecewise-linear over training quantile bins"
    )
    stats_bins: int = Field(16, ge=2, description="quantile bins per statistic for stats_encoding='ple'")
    pair_stats: bool = Field(
        False, description="add a learned projection of each layer's pair statistics with the layer before it (model.pairs)"
    )
    layer_count: bool = Field(
        False, description="add a learned projection of log(layers) to the network embedding (its pooling is a mean)"
    )
    members: int = Field(1, ge=1, description="SNEs trained from different seeds whose logits are averaged")
    slice_tokens: int = Field(
        32768, ge=64, description="set elements per attention call: bounds memory and keeps CPU work in cache"
    )

    @property
    def embedding_size(self) -> int:
        """Floats in a network embedding: each member's `encoding`, side by side."""
        return self.members * self.encoding

    @model_validator(mode="after")
    def _check(self) -> SNEConfig:
        if self.hidden % self.heads or self.encoding % self.heads:
            raise ValueError("hidden and encoding must be divisible by heads")
        if not (self.use_chunks or self.use_stats):
            raise ValueError("at least one of use_chunks and use_stats must be on")
        return self


def _one_path_variants(cfg: SNEConfig) -> dict[str, SNEConfig]:
    """`cfg` and its two ablation variants (`-stats`: no chunk path, `-chunks`: no statistics)."""
    return {
        cfg.name: cfg,
        f"{cfg.name}-stats": cfg.model_copy(update={"name": f"{cfg.name}-stats", "use_chunks": False}),
        f"{cfg.name}-chunks": cfg.model_copy(update={"name": f"{cfg.name}-chunks", "use_stats": False}),
    }


CONFIGS: dict[str, SNEConfig] = {
    "paper": SNEConfig(),
    # CPU-trainable; LayerNorm keeps CPU-sized training off a constant prediction (measured on arch1-digits)
    **_one_path_variants(SNEConfig(
        name="small", chunk_size=16, hidden=32, encoding=64, heads=2, inducing=16, head_hidden=64, layer_norm=True
    )),
    # what the build script trains where a GPU is present: 4x wider, and three members still fit the 20 MB a
    # shipped predictor may take (1.39 M parameters each; the paper config's 21.7 M would not)
    **_one_path_variants(SNEConfig(
        name="medium", chunk_size=16, hidden=128, encoding=256, heads=4, inducing=32, head_hidden=256, layer_norm=True
    )),
    # for tests and smoke runs only: fast, not accurate
    "tiny": SNEConfig(
        name="tiny", chunk_size=16, hidden=16, encoding=16, heads=1, sab_blocks=1, isab_blocks=1, inducing=4,
        head_hidden=16, layer_norm=True,
    ),
}


def get_config(name: str) -> SNEConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown config {name!r}; known: {', '.join(CONFIGS)}") from None
