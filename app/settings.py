"""One place for the service's configuration: every field is an `SNE_*` environment variable."""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from model.admission import Limits

_LIMITS = Limits()  # the library's defaults are the service's defaults


class Settings(BaseSettings):
    """Service settings; `SNE_<FIELD>` in the environment overrides each default."""

    model_config = SettingsConfigDict(env_prefix="SNE_", env_file=None, extra="ignore")

    host: str = Field("127.0.0.1", description="Address `sne serve` binds to.")
    port: int = Field(8000, description="Port `sne serve` listens on.")
    predictor_path: Path | None = Field(
        None, description="Directory of a trained predictor (weights + card); the shipped default when unset."
    )
    predictors_dir: Path | None = Field(
        None, description="Directory of extra predictors (one subfolder each: card.json + model.safetensors), "
        "served next to the default; rescanned on SIGHUP and `POST /v1/admin/reload`."
    )
    admin_open: bool = Field(
        False, description="Allow `POST /v1/admin/reload` without an API key when SNE_API_KEYS is empty "
        "(refused otherwise: reloading is never open by accident)."
    )
    redis_url: str | None = Field(
        None, description="Redis URL for the shared result cache; an in-process LRU when unset."
    )
    cache_ttl_seconds: int = Field(7 * 24 * 3600, description="Lifetime of a cached result in Redis.")
    lru_size: int = Field(1024, description="Entries of the in-process cache used when Redis is unset.")
    lru_bytes: int = Field(
        256 * 1024 * 1024, ge=0, description="Bytes of the in-process cache (packed records); the least recently used go first."
    )
    max_upload_bytes: int = Field(512 * 1024 * 1024, description="Largest accepted checkpoint (413 above).")
    max_batch_size: int = Field(32, description="Most checkpoints the worker encodes in one forward.")
    max_batch_chunks: int = Field(262_144, description="Chunk budget of one batch (bounds memory per forward).")
    max_wait_ms: float = Field(5.0, description="How long the worker waits to fill a batch.")
    queue_limit: int = Field(256, description="Queued checkpoints before new requests get 503.")
    device: str = Field("auto", description="`auto` (CUDA when present), `cpu` or `cuda[:N]`.")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="Autocast precision of the forward on CUDA; the CPU always runs fp32."
    )
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Accepted `X-API-Key` values (JSON list or comma list); open when empty."
    )

    # ---- added with the HTTP service (app/); every one is documented in the README's settings table
    cache_prefix: str = Field(
        "sne:", description="Prefix of every Redis key (`<prefix><predictor name>:<version>:<sha256>`); lets deployments share a Redis."
    )
    redis_timeout_seconds: float = Field(
        0.5, gt=0, description="Connect/read timeout of one Redis call; a slower Redis counts as down for that call."
    )
    redis_retry_seconds: float = Field(
        5.0, ge=0, description="After a Redis failure, skip Redis this long before trying again (doubles per failed retry, max 60 s; concurrent failures count once)."
    )
    # ---- checkpoint limits: bounded from the header before any work scales with them (model.admission.Limits)
    max_header_bytes: int = Field(_LIMITS.max_header_bytes, ge=2, description="Largest safetensors JSON header (422 above).")
    max_metadata_entries: int = Field(
        _LIMITS.max_metadata_entries, ge=0, description="Most `__metadata__` entries in a header (422 above)."
    )
    max_metadata_bytes: int = Field(
        _LIMITS.max_metadata_bytes, ge=0, description="Most characters of `__metadata__` keys and values (422 above)."
    )
    max_tensors: int = Field(_LIMITS.max_tensors, ge=1, description="Most tensors in one checkpoint (422 above).")
    max_tensor_dims: int = Field(
        _LIMITS.max_ndim, ge=1, le=64, description="Most dimensions of one tensor (422 above), checked before its sizes."
    )
    max_dim_size: int = Field(
        _LIMITS.max_dim, ge=1, description="Largest size of one tensor dimension (422 above), checked before any product."
    )
    max_params: int = Field(_LIMITS.max_params, ge=1, description="Most values in all tensors of a checkpoint (422 above).")
    layer_chunk_budget: int = Field(
        _LIMITS.layer_chunk_budget, ge=1,
        description="Chunks encoded per layer; a larger layer is sampled (stratified, seeded by the content hash).",
    )
    checkpoint_chunk_budget: int = Field(
        _LIMITS.checkpoint_chunk_budget, ge=1,
        description="Chunks encoded per checkpoint, shared over its layers (small ones keep all); more are sampled.",
    )
    max_batch_files: int = Field(64, ge=1, description="Most files in one `POST /v1/encode/batch` request.")
    parse_workers: int = Field(
        4, ge=1, description="Uploads parsed at the same time (threads off the event loop); bounds parse memory."
    )
    spool_bytes: int = Field(
        8 * 1024 * 1024, ge=0, description="Uploads up to this size stay in memory; larger ones stream to a temp file."
    )
    upload_dir: Path | None = Field(None, description="Where large uploads are spooled; the system temp dir when unset.")
    retry_after_seconds: int = Field(1, ge=0, description="`Retry-After` of a 503 (queue full or shutting down).")
    shutdown_timeout_seconds: float = Field(
        30.0, ge=0, description="On shutdown, how long the worker may take to finish queued and in-flight encodes."
    )
    warmup: bool = Field(True, description="Run one tiny forward at start-up so the first request is not slow.")
    overlap_reads: bool = Field(
        True, description="Encode a large upload's chunks while it is read (1 M parameters or more, as `sne encode`): "
        "its chunk path runs in the parse stage, the batched forward does the rest. Only at full precision."
    )
    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads of the encoder (torch's default when unset)."
    )

    # ---- hardening (issue 11): every limit a client can hit, with what it sees there (README "Reliability")
    parse_timeout_seconds: float = Field(
        30.0, gt=0, description="Longest an upload may take to read and chunk (422 `parse_timeout` above)."
    )
    body_timeout_seconds: float = Field(
        120.0, gt=0, description="Longest an upload's body may take to arrive (408 `body_timeout` above; the connection is closed)."
    )
    limit_concurrency: int = Field(
        512, ge=1, description="Open connections plus in-flight requests `sne serve` accepts before answering 503."
    )
    keep_alive_seconds: int = Field(5, ge=1, description="Idle keep-alive connections are closed after this long.")
    http_header_bytes: int = Field(
        65_536, ge=1024, description="Largest request line plus headers `sne serve` reads (h11); the connection is dropped above."
    )
    backlog: int = Field(2048, ge=1, description="Pending TCP connections the listening socket queues (`sne serve`).")
    large_chunks: int = Field(
        32_768, ge=0, description="Checkpoints with more chunks are encoded in their own lane (one at a time, its own "
        "thread), so they never hold up small ones; 0 puts every checkpoint in one lane."
    )
    large_queue_limit: int = Field(4, ge=1, description="Large checkpoints waiting for their lane before new ones get 503.")
    encode_timeout_seconds: float = Field(
        120.0, gt=0, description="Longest an upload may wait for and take in the encoder (504 `encode_timeout` above)."
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="`json`: one JSON object per log line (python-json-logger), with the request id."
    )
    docs: bool = Field(True, description="Serve `/docs` (Swagger UI) and `/openapi.json`; `false` turns both off (404).")

    def limits(self) -> Limits:
        """The checkpoint limits and chunk budgets, shared by the service and the CLI (`model.admission`)."""
        return Limits(
            max_header_bytes=self.max_header_bytes, max_metadata_entries=self.max_metadata_entries,
            max_metadata_bytes=self.max_metadata_bytes, max_tensors=self.max_tensors, max_ndim=self.max_tensor_dims,
            max_dim=self.max_dim_size, max_params=self.max_params, layer_chunk_budget=self.layer_chunk_budget,
            checkpoint_chunk_budget=self.checkpoint_chunk_budget,
        )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        """Accept `a,b` as well as `["a","b"]` so keys are easy to set in a shell."""
        if isinstance(v, str):
            v = v.strip()
            if v.startswith("["):
                return json.loads(v)
            return [k.strip() for k in v.split(",") if k.strip()]
        return v


@lru_cache
def get_settings() -> Settings:
    """Settings read once from the environment (FastAPI dependency)."""
    return Settings()
