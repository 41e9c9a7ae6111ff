"""The SNE configuration: one object, with the paper's sizes (Table 7) and a small CPU-trainable one."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class SNEConfig(BaseModel):
    """Sizes of the encoder and its predictor heads; saved in every predictor card."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "paper"
    chunk_size: int = Field(32, ge=1, description="c: elements per chunk (a set)")
    hidden: int = Field(512, ge=4, description="SAB hidden size h")
    encoding: int = Field(1024, ge=4, description="network encoding size (PMA seed size of the last pool)")
    heads: int = Field(4, ge=1)
    sab_blocks: int = Field(2, ge=1, description="SABs in each set-to-set stack")
    layer_norm: bool = Field(False, description="LayerNorm inside MABs (Table 7: False)")
    head_hidden: int = Field(1000, ge=1, description="width of the predictor MLP (Table 8: 1000)")
    input_scale: float = Field(
        1.0, gt=0, description="weights are multiplied by this before the first SAB: trained weights are ~0.1, "
        "too small next to the SAB biases for the ReLUs to see their spread (embeddings collapse)",
    )
    slice_tokens: int = Field(
        32768, ge=64, description="set elements per attention call: bounds memory and keeps CPU work in cache"
    )


CONFIGS: dict[str, SNEConfig] = {
    "paper": SNEConfig(),
    # LayerNorm and input scaling: without them the embeddings of different checkpoints are nearly identical
    # at initialisation (across-checkpoint spread ~5e-5 of the feature spread) and CPU-sized training
    # stays at a constant prediction (measured on the arch1-digits zoo; see README, Default predictor)
    "small": SNEConfig(
        name="small", chunk_size=16, hidden=32, encoding=64, heads=2, head_hidden=64, layer_norm=True, input_scale=20.0
    ),
    # for tests and smoke runs only: fast, not accurate
    "tiny": SNEConfig(name="tiny", chunk_size=16, hidden=16, encoding=16, heads=1, sab_blocks=1, head_hidden=16),
}


def get_config(name: str) -> SNEConfig:
    try:
        return CONFIGS[name]
    except KeyError:
        raise ValueError(f"unknown config {name!r}; known: {', '.join(CONFIGS)}") from None
