"""Encoder speed on the CPU, measured in one run (ratios only; these machines are noisy).

1. The packed encoder (one forward for 64 Arch1 checkpoints) against a plain per-checkpoint, per-layer loop
   over the same weights, checking that both give equal embeddings.
2. Parse + chunk of a ~100 MB checkpoint against `safetensors.torch.load_file` alone.

Run: `.venv/bin/python -m benchmarks.encoder` (add `--config paper` for the paper's sizes).
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from model.admission import Limits
from model.blocks import sinusoid
from model.checkpoint import load_checkpoint, read_header
from model.chunking import ChunkedLayer, chunk_checkpoint, chunk_file
from model.config import get_config
from model.packing import pack
from model.sne import SNE, STATS_CLAMP, type_encoding
from tests.nets import arch1, state


@torch.no_grad()
def loop_forward(model: SNE, layers: list[ChunkedLayer]) -> torch.Tensor:
    """The plain way: every part of every layer of one checkpoint on its own, chunks padded to c and masked."""
    layer_vecs = []
    for layer in layers:
        single = pack([[layer]])
        parts = []
        for p in range(single.part_start.shape[0]):
            s, n = int(single.part_start[p]), int(single.part_len[p])
            x = model.chunk_encoder(single.values[s : s + n, :, None], single.mask[s : s + n])  # padded to c
            parts.append(model.part_encoder(x[None]))
        token = torch.cat(parts) + type_encoding(single.part_type, model.cfg.hidden) + sinusoid(single.part_level, model.cfg.hidden)
        z = ((single.part_stats - model.stats_shift) / model.stats_scale).clamp(-STATS_CLAMP, STATS_CLAMP)
        depth = torch.full((z.shape[0], 1), layer.level / max(1, max(l.level for l in layers)))
        token = token + model.stats_proj(torch.cat([z, depth], -1))
        layer_vecs.append(model.layer_encoder(token[None]))
    layers_t = torch.cat(layer_vecs)
    layers_t = layers_t + sinusoid(torch.tensor([l.level for l in layers]), layers_t.shape[-1])
    return model.network_encoder(layers_t[None])


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bench_encoder(config: str, n: int, repeat: int) -> None:
    cfg = get_config(config)
    torch.manual_seed(0)
    model = SNE(cfg).eval()
    ckpts = []
    for i in range(n):
        torch.manual_seed(i)
        ckpts.append(chunk_checkpoint(load_checkpoint(_bytes(state(arch1()))), cfg.chunk_size))
    with torch.no_grad():
        packed = model(pack(ckpts)).embedding
    looped = torch.cat([loop_forward(model, c) for c in ckpts])
    diff = float((packed - looped).abs().max())

    @torch.no_grad()
    def packed_forward() -> None:
        model.encode(pack(ckpts))

    t_packed = best_of(packed_forward, repeat)
    t_loop = best_of(lambda: [loop_forward(model, c) for c in ckpts], repeat)
    print(f"## Packed encoder vs per-checkpoint, per-layer loop ({n} Arch1 checkpoints, config {config!r}, "
          f"{torch.get_num_threads()} threads)")
    print("| method | seconds | checkpoints/s |\n|---|---|---|")
    print(f"| per-layer loop | {t_loop:.3f} | {n / t_loop:.1f} |")
    print(f"| packed batch | {t_packed:.3f} | {n / t_packed:.1f} |")
    print(f"speed-up: **{t_loop / t_packed:.1f}x**; max |packed - loop| embedding difference: {diff:.2e}\n")


def _bytes(tensors: dict) -> bytes:
    from safetensors.torch import save

    return save(tensors)


def bench_parse(mb: int, repeat: int) -> None:
    torch.manual_seed(0)
    tensors, total = {}, 0
    i = 0
    while total < mb * 1e6:  # a mix of conv and linear layers, like a ResNet/VGG
        if i % 2 == 0:
            t = torch.randn(256, 256, 3, 3)
        else:
            t = torch.randn(1024, 1024)
        tensors[f"layers.{i}.weight"] = t
        tensors[f"layers.{i}.bias"] = torch.randn(t.shape[0])
        total += t.numel() * 4
        i += 1
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "big.safetensors"
        save_file(tensors, path)
        size = path.stat().st_size / 1e6
        load_file(path)  # warm the page cache for both
        t_load = best_of(lambda: load_file(path), repeat)
        t_touch = best_of(lambda: [t.sum() for t in load_file(path).values()], repeat)
        t_header = best_of(lambda: read_header(path, Limits()), repeat)
        t_stream = best_of(lambda: chunk_file(path, 16, Limits(), "bench"), repeat)
    print(f"## Read + chunk of a {size:.0f} MB checkpoint ({len(tensors)} tensors), the service's path")
    print("| step | seconds | vs reading every value |\n|---|---|---|")
    print(f"| safetensors.torch.load_file (lazy: memory-maps, reads nothing yet) | {t_load:.3f} | {t_load / t_touch:.2f}x |")
    print(f"| load_file + read every value once (the floor for any validating parser) | {t_touch:.3f} | 1.00x |")
    print(f"| read_header + admission (bounds, shapes: what a refusal costs) | {t_header:.3f} | {t_header / t_touch:.2f}x |")
    print(f"| chunk_file (exact statistics of every value, with the NaN/Inf check in the same read, + budgeted chunks) | {t_stream:.3f} | "
          f"**{t_stream / t_touch:.2f}x** |\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="small")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--mb", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    bench_encoder(args.config, args.n, args.repeat)
    bench_parse(args.mb, args.repeat)


if __name__ == "__main__":
    main()
