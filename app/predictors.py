"""Which predictors this process serves: finding, fingerprinting and loading them (plain blocking code).

Sources: the default predictor (`SNE_PREDICTOR_PATH`, else the shipped one) is always first; then every
subfolder of `SNE_PREDICTORS_DIR` (sorted) that holds `card.json` and `model.safetensors`. Hidden folders
and `lost+found` are ignored; any other subfolder that is not a loadable predictor is a `Problem` (logged,
listed by `GET /v1/predictors`, never fatal: the service starts with the rest).

Names: a predictor answers to its card `name` (what responses, cache keys and metrics carry) and, as an
alias, to its folder name; the default also to `default`. Card names must be unique: a later folder
whose card name is already served is refused (a `Problem`). `app.registry` decides the names, runs this
module in a thread and owns the workers.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from app.settings import Settings
from model.checkpoint import checkpoint_from_tensors
from model.predictor import DEFAULT_PREDICTOR_DIR, Predictor

log = logging.getLogger("sne.predictors")

DEFAULT_NAME = "default"
REQUIRED = ("card.json", "model.safetensors")
FILES = (*REQUIRED, "reference.safetensors")
IGNORED = frozenset({"lost+found"})  # what a fresh ext4 volume holds

Fingerprint = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True)
class Source:
    """A predictor folder to serve (path None: no predictor ships, the untrained placeholder is served)."""

    folder: str  # folder name; `default` for the default predictor
    path: Path | None
    fingerprint: Fingerprint  # (file, size, mtime_ns) of its files: a rewrite of any of them changes it
    is_default: bool = False


@dataclass(frozen=True)
class Problem:
    """A folder that is not served, and why."""

    folder: str
    error: str


def fingerprint(path: Path | None) -> Fingerprint:
    """Size and modification time of the predictor's files: cheap, and changed by every rewrite."""
    if path is None:
        return ()
    out = []
    for name in FILES:
        try:
            st = (path / name).stat()
        except OSError:
            continue
        out.append((name, st.st_size, st.st_mtime_ns))
    return tuple(out)


def default_source(settings: Settings) -> Source:
    path = settings.predictor_path
    if path is None and (DEFAULT_PREDICTOR_DIR / "card.json").exists():
        path = DEFAULT_PREDICTOR_DIR
    return Source(DEFAULT_NAME, path, fingerprint(path), is_default=True)


def scan(settings: Settings) -> tuple[list[Source], list[Problem]]:
    """The default source, then one per predictor folder of `SNE_PREDICTORS_DIR`; problems for the rest."""
    default = default_source(settings)
    sources: list[Source] = [default]
    problems: list[Problem] = []
    root = settings.predictors_dir
    if root is None:
        return sources, problems
    if not root.is_dir():
        return sources, [Problem(str(root), f"SNE_PREDICTORS_DIR {root} is not a directory")]
    same_as_default = default.path.resolve() if default.path is not None else None
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or child.name in IGNORED or not child.is_dir():
            continue
        if same_as_default is not None and child.resolve() == same_as_default:
            continue  # SNE_PREDICTOR_PATH points into the directory: served once, as the default
        missing = [f for f in REQUIRED if not (child / f).is_file()]
        if missing:
            problems.append(Problem(child.name, f"not a predictor folder: missing {', '.join(missing)}"))
        elif child.name == DEFAULT_NAME:
            problems.append(Problem(child.name, f"the folder name {DEFAULT_NAME!r} is reserved for the default "
                                                "predictor (set SNE_PREDICTOR_PATH to replace it)"))
        else:
            sources.append(Source(child.name, child, fingerprint(child)))
    return sources, problems


def warm_up(predictor: Predictor, autocast: torch.dtype | None) -> None:
    """One tiny forward, so the first request does not pay for lazy initialisation."""
    g = torch.Generator().manual_seed(0)
    tiny = checkpoint_from_tensors({
        "0.weight": torch.randn(4, 1, 3, 3, generator=g), "0.bias": torch.randn(4, generator=g),
        "1.weight": torch.randn(3, 4, generator=g), "1.bias": torch.randn(3, generator=g),
    })
    predictor.predict([tiny, tiny], autocast)


def load(source: Source, device: torch.device, autocast: torch.dtype | None, warmup: bool) -> Predictor:
    """Load a source onto the device (and warm it up); raises whatever a broken folder makes the loader raise."""
    predictor = Predictor.load(source.path).to(device)
    if warmup:
        warm_up(predictor, autocast)
    return predictor


def describe_failure(e: BaseException) -> str:
    """One line for the listing and the log (a state-dict mismatch message can run to pages)."""
    text = " ".join(str(e).split())
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def find_local(name: str | None, settings: Settings) -> Path | None:
    """The folder `sne gate --local --predictor NAME` loads, resolved as the service names predictors: a
    directory path, `default` (or nothing) for the default, a folder of SNE_PREDICTORS_DIR, or a card name
    there. None means the shipped default (or the untrained placeholder). `LookupError` lists what exists."""
    if not name or name == DEFAULT_NAME:
        return default_source(settings).path
    given = Path(name).expanduser()
    if given.is_dir():
        return given
    found, _ = scan(settings)
    for src in found[1:]:
        if src.folder == name:
            return src.path
    cards: dict[str, Path] = {}
    for src in found:
        if src.path is not None:
            try:
                cards.setdefault(str(json.loads((src.path / "card.json").read_text())["name"]), src.path)
            except (OSError, ValueError, KeyError, TypeError):
                continue
    if name in cards:
        return cards[name]
    where = f"SNE_PREDICTORS_DIR={settings.predictors_dir}" if settings.predictors_dir else "SNE_PREDICTORS_DIR is unset"
    known = sorted({DEFAULT_NAME, *(s.folder for s in found[1:]), *cards})
    raise LookupError(f"no predictor {name!r}: not a directory, nor a predictor in {where}; known: {', '.join(known)}")
