"""`sne calibrate`: recalibrate a trained predictor's intervals on its val split plus held-out checkpoints."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from app.cli.common import (
    OnBad,
    OnBadCheckpoint,
    Threads,
    console,
    existing_dir,
    existing_dirs,
    existing_files,
    labelled_sources,
)


def calibrate_command(
    predictor: Annotated[Path, typer.Option(
        callback=existing_dir, help="Trained predictor directory whose card.json is rewritten.",
    )],
    labels: Annotated[list[Path] | None, typer.Option(
        "--labels", callback=existing_files,
        help="Labels CSV of checkpoints the predictor never trained on; every split is used (repeatable).",
    )] = None,
    zoo_dirs: Annotated[list[Path] | None, typer.Option(
        "--zoo", callback=existing_dirs,
        help="Zoo the predictor never trained on, e.g. `sne zoo --seed 1` of its family; every split is used "
        "(repeatable).",
    )] = None,
    threads: Threads = 2,
    on_bad_checkpoint: OnBadCheckpoint = OnBad.fail,
) -> None:
    """Calibrate the 90/80/95 % intervals on the predictor's val split plus these checkpoints (a new version)."""
    sources = labelled_sources(labels, zoo_dirs)
    import torch

    from model.training.calibrate import recalibrate

    torch.set_num_threads(threads)
    pred = recalibrate(predictor, sources, on_bad_checkpoint.value)
    conf = pred.card.conformal
    q = (conf.model_extra or {}).get("normalized", {}).get("accuracy", {}).get("0.90")
    console.print(f"calibrated {pred.name} {pred.version} on {conf.n_calibration} checkpoints "
                  f"({', '.join(f'{s}: {n}' for s, n in (conf.model_extra or {}).get('sources', {}).items())}); "
                  f"90 % half-width {conf.half_width('0.90'):.3f}, normalised scale {q:.3f}", soft_wrap=True)
