"""What the pair statistics (`model.pairs`) cost on the read of real-sized checkpoints, measured in one run.

For each checkpoint of `benchmarks.real_checkpoints` (built there if missing, into the page cache first) it times
`chunk_file` with the default budgets as the service reads an upload, alternately with the pair statistics and
without them (`with_pairs=False`, as for an encoder that does not read them), `--repeat` times each, and prints the medians, their
ratio and how many layers got a pair. Statistics and Grams on one thread.

Run: `OMP_NUM_THREADS=1 .venv/bin/python -m benchmarks.pairs [--only resnet18 minilm] [--repeat 5]`.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from benchmarks.real_checkpoints import LARGE, MODELS, ensure, into_page_cache
from model import chunking, stats_pass
from model.admission import Limits
from model.pairs import PAIR_NAMES


def _read(path: Path, on: bool) -> tuple[float, int]:
    t0 = time.perf_counter()
    ck = chunking.chunk_file(path, 16, Limits(), b"bench", with_pairs=on)
    seconds = time.perf_counter() - t0
    return seconds, sum(int(la.pair[PAIR_NAMES.index("pair_present")]) for la in ck.layers)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("benchmarks/out/ckpts"))
    ap.add_argument("--only", nargs="*", default=LARGE, choices=list(MODELS))
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args()
    torch.set_num_threads(1)
    stats_pass.warm_up()
    print("| checkpoint | layers with a pair | read without pairs | read with pairs | ratio |\n|---|---:|---:|---:|---:|")
    for name in a.only:
        path = ensure(a.dir, name)
        into_page_cache(path)
        _read(path, True)  # first touch: mapping and numba dispatch
        times: dict[bool, list[float]] = {True: [], False: []}
        pairs = 0
        for _ in range(a.repeat):
            for on in (False, True):
                seconds, n = _read(path, on)
                times[on].append(seconds)
                pairs = max(pairs, n)
        off, on_ = statistics.median(times[False]), statistics.median(times[True])
        print(f"| {name} | {pairs} | {off:.3f} s | {on_:.3f} s | {on_ / off:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
