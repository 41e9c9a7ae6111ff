"""Local mode (`--local`): the same predictor class the service uses, loaded in this process."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.cli.gate.verdict import Verdict, decide, error_verdict


def gate_local(
    files: Sequence[str | Path],
    predictor_path: str | Path | None = None,
    *,
    min_accuracy: float,
    use_lower_bound: bool = False,
    fail_on_ood: bool = False,
    predictor: Any = None,
) -> list[Verdict]:
    """Verdicts from the predictor loaded in-process (`Predictor.load(predictor_path)`), one file at a time.

    Raises whatever `Predictor.load` raises for a bad predictor path (the command maps it to exit 2).
    """
    from app.local import encode_parsed, file_sha256, parse_file
    from model.errors import CheckpointError
    from model.predictor import Predictor

    pred = predictor if predictor is not None else Predictor.load(predictor_path)
    verdicts: list[Verdict] = []
    for f in files:
        name = str(f)
        try:
            with open(f, "rb"):
                pass
        except OSError as e:
            verdicts.append(error_verdict(f, "unreadable", f"cannot read {f}: {e.strerror or e}"))
            continue
        try:
            parsed = parse_file(Path(f), pred)  # streamed from the file: a large checkpoint is never held whole
        except CheckpointError as e:
            sha = file_sha256(Path(f))
            verdicts.append(error_verdict(name, e.reason, f"bad checkpoint: {e.message} [{e.reason}]", sha256=sha))
            continue
        (body,) = encode_parsed([parsed], pred)
        verdicts.append(decide(body.model_dump(mode="json"), min_accuracy, use_lower_bound, fail_on_ood, file=name))
    return verdicts

