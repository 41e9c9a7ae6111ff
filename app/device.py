"""Where the encoder runs and in what precision (`SNE_DEVICE`, `SNE_PRECISION`)."""
from __future__ import annotations

import logging

import torch

log = logging.getLogger("sne.service")

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(setting: str) -> torch.device:
    """`auto` -> the first CUDA device when there is one, else the CPU; `cpu`/`cuda[:N]` as given."""
    setting = (setting or "auto").strip().lower()
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError:
        raise ValueError(f"SNE_DEVICE={setting!r} is not a device; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"SNE_DEVICE={setting!r} but CUDA is not available on this machine")
    return device


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of the forward: bf16/fp16 on CUDA only; None (fp32) on the CPU or for `fp32`."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        log.warning("SNE_PRECISION=bf16 but this GPU has no bf16; using fp16")
        return torch.float16
    return _DTYPES[precision]
