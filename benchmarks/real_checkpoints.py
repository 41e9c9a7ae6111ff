"""Real-sized checkpoints, end to end: chunks seen vs total, encode seconds, peak RSS; WeightWatcher beside it.

Builds ResNet-18, ViT-B/16, a BERT-base-style encoder, GPT-2 small (fp16) and a 1.1 B Llama-shaped (bf16)
checkpoint with the real tensor names and shapes, written tensor by tensor with random values of plausible
scale (so building needs little RAM), then for each, every measurement in its own subprocess (clean peak RSS):
  - encode: `chunk_file` (header-only admission, streaming statistics, budget sampling) + pack + SNE forward,
    as `sne encode` runs it: from 1 M parameters the parts' chunk path runs while the file is read
    (`model.overlap`, "overlapped" in the table; the forward column is then what is left after the read);
  - WeightWatcher's `analyze()` on the state dict (the usual data-free check), under a time limit.
Also: the part encoder's cost curve (chunks in one part -> seconds), and budgeted vs full encoding on
mid-size models (cosine of the embeddings, |delta predicted accuracy|).

Run: `OMP_NUM_THREADS=2 .venv/bin/python -m benchmarks.real_checkpoints [--dir benchmarks/out/ckpts] [--only resnet18]`
(`--device cuda` adds GPU timings where one exists; `--service` instead POSTs each file, streamed, to a live
`sne serve` and prints status, seconds, chunks and the server's peak RSS: benchmarks/real_service.py). Threads follow OMP_NUM_THREADS for both tools. Timings are
of this machine; compare ratios in one run. On an oversubscribed machine use OMP_NUM_THREADS=1: idle OpenMP
threads spin, so the CPU seconds of a 2-thread run there overstate the work.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import torch

Spec = list[tuple[str, tuple[int, ...]]]
DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _ln(p: str, d: int, bias: bool = True) -> Spec:
    s: Spec = [(f"{p}.weight", (d,))]
    return s + [(f"{p}.bias", (d,))] if bias else s


def _lin(p: str, o: int, i: int, bias: bool = True) -> Spec:
    return [(f"{p}.weight", (o, i))] + ([(f"{p}.bias", (o,))] if bias else [])


def _bn(p: str, d: int) -> Spec:
    return [(f"{p}.{k}", (d,)) for k in ("weight", "bias", "running_mean", "running_var")]


def resnet18(width: int = 64) -> Spec:
    s: Spec = [("conv1.weight", (width, 3, 7, 7)), *_bn("bn1", width)]
    cin = width
    for i, c in enumerate((width, 2 * width, 4 * width, 8 * width), 1):
        for b in range(2):
            p = f"layer{i}.{b}"
            s += [(f"{p}.conv1.weight", (c, cin, 3, 3)), *_bn(f"{p}.bn1", c), (f"{p}.conv2.weight", (c, c, 3, 3)), *_bn(f"{p}.bn2", c)]
            if b == 0 and cin != c:
                s += [(f"{p}.downsample.0.weight", (c, cin, 1, 1)), *_bn(f"{p}.downsample.1", c)]
            cin = c
    return s + _lin("fc", 1000, 8 * width)


def vit_b16() -> Spec:
    d = 768
    s: Spec = [("cls_token", (1, 1, d)), ("pos_embed", (1, 197, d)), ("patch_embed.proj.weight", (d, 3, 16, 16)), ("patch_embed.proj.bias", (d,))]
    for i in range(12):
        p = f"blocks.{i}"
        s += _ln(f"{p}.norm1", d) + _lin(f"{p}.attn.qkv", 3 * d, d) + _lin(f"{p}.attn.proj", d, d)
        s += _ln(f"{p}.norm2", d) + _lin(f"{p}.mlp.fc1", 4 * d, d) + _lin(f"{p}.mlp.fc2", d, 4 * d)
    return s + _ln("norm", d) + _lin("head", 1000, d)


def bert(d: int = 768, n: int = 12, ff: int = 3072, vocab: int = 30522) -> Spec:
    s: Spec = [("embeddings.word_embeddings.weight", (vocab, d)), ("embeddings.position_embeddings.weight", (512, d)),
               ("embeddings.token_type_embeddings.weight", (2, d)), *_ln("embeddings.LayerNorm", d)]
    for i in range(n):
        p = f"encoder.layer.{i}"
        for k in ("query", "key", "value"):
            s += _lin(f"{p}.attention.self.{k}", d, d)
        s += _lin(f"{p}.attention.output.dense", d, d) + _ln(f"{p}.attention.output.LayerNorm", d)
        s += _lin(f"{p}.intermediate.dense", ff, d) + _lin(f"{p}.output.dense", d, ff) + _ln(f"{p}.output.LayerNorm", d)
    return s + _lin("pooler.dense", d, d)


def gpt2() -> Spec:
    d = 768
    s: Spec = [("wte.weight", (50257, d)), ("wpe.weight", (1024, d))]
    for i in range(12):
        p = f"h.{i}"
        s += _ln(f"{p}.ln_1", d) + [(f"{p}.attn.c_attn.weight", (d, 3 * d)), (f"{p}.attn.c_attn.bias", (3 * d,))]
        s += [(f"{p}.attn.c_proj.weight", (d, d)), (f"{p}.attn.c_proj.bias", (d,))] + _ln(f"{p}.ln_2", d)
        s += [(f"{p}.mlp.c_fc.weight", (d, 4 * d)), (f"{p}.mlp.c_fc.bias", (4 * d,))]
        s += [(f"{p}.mlp.c_proj.weight", (4 * d, d)), (f"{p}.mlp.c_proj.bias", (d,))]
    return s + _ln("ln_f", d)


def llama_1b() -> Spec:
    d, ff, kv = 2048, 5632, 256
    s: Spec = [("model.embed_tokens.weight", (32000, d))]
    for i in range(22):
        p = f"model.layers.{i}"
        s += _lin(f"{p}.self_attn.q_proj", d, d, False) + _lin(f"{p}.self_attn.k_proj", kv, d, False)
        s += _lin(f"{p}.self_attn.v_proj", kv, d, False) + _lin(f"{p}.self_attn.o_proj", d, d, False)
        s += _lin(f"{p}.mlp.gate_proj", ff, d, False) + _lin(f"{p}.mlp.up_proj", ff, d, False)
        s += _lin(f"{p}.mlp.down_proj", d, ff, False)
        s += _ln(f"{p}.input_layernorm", d, False) + _ln(f"{p}.post_attention_layernorm", d, False)
    return s + _ln("model.norm", d, False) + _lin("lm_head", 32000, d, False)


# name -> (spec, safetensors dtype); "minilm" is the 22.7 M BERT-style sentence encoder of the issue
MODELS = {
    "resnet18": (resnet18, "F32"), "minilm": (lambda: bert(384, 6, 1536), "F32"), "vit_b16": (vit_b16, "F32"),
    "bert_base": (bert, "F32"), "gpt2_fp16": (gpt2, "F16"), "llama_1b_bf16": (llama_1b, "BF16"),
    # mid-size, for budgeted vs full encoding (full encoding of the large ones takes minutes on 2 cores)
    "resnet18_half": (lambda: resnet18(32), "F32"), "bert_small": (lambda: bert(256, 4, 1024, 8192), "F32"),
}
MID_SIZE = ("resnet18_half", "bert_small")
LARGE = [m for m in MODELS if m not in MID_SIZE]


def _values(name: str, shape: tuple[int, ...], gen: torch.Generator, rows: slice) -> torch.Tensor:
    """Random values of a plausible scale: norms ~1, variances ~1, means ~0, weights ~N(0, 1/fan_in)."""
    leaf = name.rsplit(".", 1)[-1]
    n_rows = rows.stop - rows.start
    block = (n_rows, *shape[1:]) if shape else ()
    if leaf == "running_var" or (leaf == "weight" and len(shape) == 1):
        return 1.0 + 0.1 * torch.randn(block, generator=gen)
    if leaf in ("bias", "running_mean") or len(shape) <= 1:
        return 0.02 * torch.randn(block, generator=gen)
    fan_in = math.prod(shape[1:])
    return torch.randn(block, generator=gen) / math.sqrt(fan_in)


def write_checkpoint(path: Path, spec: Spec, dtype: str, seed: int = 0) -> None:
    """A safetensors file written tensor by tensor, at most ~64 MB of values in memory at a time."""
    header, off = {}, 0
    size = torch.tensor([], dtype=DTYPES[dtype]).element_size()
    for name, shape in spec:
        n = math.prod(shape) * size
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + n]}
        off += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    gen = torch.Generator().manual_seed(seed)
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for name, shape in spec:
            per_row = math.prod(shape[1:]) if len(shape) > 1 else 1
            step = max(1, (16 << 20) // per_row)
            first = shape[0] if shape else 1
            for r in range(0, first, step):
                rows = slice(r, min(first, r + step))
                f.write(_values(name, shape, gen, rows).to(DTYPES[dtype]).contiguous().view(torch.uint8).numpy().tobytes())
    tmp.rename(path)


def ensure(dir_: Path, name: str) -> Path:
    spec, dtype = MODELS[name]
    path = dir_ / f"{name}.safetensors"
    if not path.exists():
        dir_.mkdir(parents=True, exist_ok=True)
        write_checkpoint(path, spec(), dtype)
    return path


# ------------------------------------------------------------------------------------- measured in a child


def _peak_rss_mb() -> float:
    """This process's peak RSS. VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec from the parent."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_predictor(spec: str):
    """The shipped predictor (`default`), an untrained small one (`untrained`: same speed), or a directory."""
    from model.predictor import Predictor

    if spec == "untrained":
        return Predictor.untrained("small")
    return Predictor.load(None if spec == "default" else Path(spec))


def into_page_cache(path: Path) -> None:
    """Read the file once, so a timing that follows measures the encoder, not the disk."""
    with path.open("rb") as f:
        while f.read(64 << 20):
            pass


def child_encode(path: Path, device: str, budget: str, predictor: str) -> dict:
    from model import overlap
    from model.admission import Limits
    from model.packing import pack
    from model.stats_pass import warm_up

    pred = load_predictor(predictor).to(device)
    warm_s = warm_up()  # once per process, like loading the predictor (the service does it at startup)
    into_page_cache(path)  # as WeightWatcher's load is outside its timer and an upload's spool file was just
    # written; a cold read here adds ~0.5 s a GB
    limits = Limits.unbudgeted() if budget == "full" else Limits()
    t0, c0 = time.perf_counter(), time.process_time()
    ck, vectors = overlap.read(path, pred.model, pred.config.chunk_size, limits, path.name, device=device)  # as
    # `sne encode` reads: from 1 M parameters the parts' chunk path runs while the file is read
    t1 = time.perf_counter()
    with torch.no_grad():
        out = pred.model(pack([ck.layers]).to(device), vectors)
        emb, acc = out.embedding[0].float().cpu(), float(out.accuracy[0])
    if device == "cuda":
        torch.cuda.synchronize()
    t2, c2 = time.perf_counter(), time.process_time()
    return {
        "params": ck.n_params, "chunks_seen": ck.n_chunks, "chunks_total": ck.total_chunks,
        "read_s": t1 - t0, "encode_s": t2 - t0, "cpu_s": c2 - c0, "overlapped": vectors is not None,
        "rss_mb": _peak_rss_mb(), "embedding": emb.tolist(), "accuracy": acc, "warm_up_s": warm_s,
    }


def child_weightwatcher(path: Path) -> dict:
    import logging

    import weightwatcher as ww
    from safetensors.torch import load_file

    logging.disable(logging.WARNING)
    state = {k: v.float() for k, v in load_file(path).items()}  # WeightWatcher works on float32 numpy
    t0, c0 = time.perf_counter(), time.process_time()
    ww.WeightWatcher(model=state).analyze()
    return {"ww_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "rss_mb": _peak_rss_mb()}


def run_child(args: list[str], timeout: float) -> dict | None:
    """Run one measurement in a fresh interpreter; None when it fails or runs past `timeout` seconds."""
    try:
        r = subprocess.run([sys.executable, "-m", "benchmarks.real_checkpoints", "--child", *args], check=False,
                           capture_output=True, text=True, timeout=timeout, env=os.environ.copy())
    except subprocess.TimeoutExpired:
        return None
    if r.returncode != 0:
        print(f"  ({' '.join(args)} failed: {r.stderr.strip().splitlines()[-1:] or r.returncode})", file=sys.stderr)
        return None
    return json.loads(r.stdout.strip().splitlines()[-1])


def median_child(args: list[str], timeout: float, repeat: int) -> dict | None:
    """`run_child` `repeat` times (fresh processes), the run of median encode seconds: on a shared machine one
    run can be 25 % off."""
    runs = [r for r in (run_child(args, timeout) for _ in range(max(1, repeat))) if r]
    return sorted(runs, key=lambda r: r["encode_s"])[len(runs) // 2] if runs else None


# ------------------------------------------------------------------------------------- the report


def cost_curve(sizes: list[int]) -> None:
    """Seconds to encode ONE part of n chunks: chunk encoder, part encoder (ISAB + PMA) and the sum."""
    from model.config import get_config
    from model.sne import SNE

    torch.manual_seed(0)
    m = SNE(get_config("small")).eval()
    print(f"## Cost curve: chunks in one part -> seconds (small config, {torch.get_num_threads()} threads)")
    print("| chunks | chunk encoder s | part encoder s (ISAB+PMA) | total s | old part stack s (SAB, issue 12) |")
    print("|---|---|---|---|---|")
    old = {32768: "6.3", 65536: "24", 131072: "93"}
    for n in sizes:
        with torch.no_grad():
            vals = torch.randn(n, 16)  # [n, c]
            t = time.perf_counter()
            x = m.chunk_encoder(vals[..., None])  # [n, h]
            t1 = time.perf_counter()
            m.part_encoder(x[None])  # [1, h]
            t2 = time.perf_counter()
        print(f"| {n:,} | {t1 - t:.2f} | {t2 - t1:.3f} | {t2 - t:.2f} | {old.get(n, '')} |")
    print()


def fmt(x: float | None, spec: str = ".1f") -> str:
    return "n/a" if x is None else format(x, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", type=Path, default=Path("benchmarks/out/ckpts"))
    ap.add_argument("--only", nargs="*", default=LARGE)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--ww-timeout", type=float, default=300.0)
    ap.add_argument("--encode-timeout", type=float, default=600.0)
    ap.add_argument("--repeat", type=int, default=3, help="encode runs per checkpoint; the median is shown")
    ap.add_argument("--no-gap", action="store_true", help="skip budgeted vs full encoding")
    ap.add_argument("--curve", nargs="*", type=int, default=[4096, 32768, 65536, 131072, 262144])
    ap.add_argument("--predictor", default="default", help="default (shipped), untrained, or a directory")
    ap.add_argument("--service", action="store_true", help="POST each checkpoint to a live `sne serve` instead")
    ap.add_argument("--child", nargs="*", help=argparse.SUPPRESS)
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    if a.child:
        what, path = a.child[0], Path(a.child[1])
        res = child_weightwatcher(path) if what == "ww" else child_encode(path, a.child[2], a.child[3], a.child[4])
        print(json.dumps(res))
        return
    if a.service:
        from benchmarks.real_service import run_service

        run_service({name: ensure(a.dir, name) for name in a.only})
        return
    if a.curve:
        cost_curve(a.curve)
    devices = ["cpu"] + (["cuda"] if a.device == "cuda" else [])
    print(f"## Real checkpoints ({torch.get_num_threads()} CPU threads; default chunk budgets)")
    print("Wall seconds, and CPU seconds (all threads) in brackets: on a shared machine the CPU seconds are the fair")
    print("comparison; the ratio is WeightWatcher's CPU seconds over the encoder's. The encode splits into reading")
    print("(header, exact statistics of every value, budgeted chunks: linear in the parameters) and the SNE forward")
    print("(pack + encoder: bounded by the chunk budget); from 1 M parameters the two overlap (model.overlap): the")
    print("read column then includes the chunk path run beside it, and the forward column is what is left after.\n")
    print("| checkpoint | params | chunks seen / total | encode s (CPU s) | read + statistics s | forward s | peak RSS MB "
          "| WeightWatcher s (CPU s) | WW peak RSS MB | WW / encode (CPU) |" + (" encode s (GPU) |" if "cuda" in devices else ""))
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if "cuda" in devices else ""))
    walls: dict[str, float] = {}
    for name in a.only:
        path = ensure(a.dir, name)
        enc = median_child(["encode", str(path), "cpu", "budget", a.predictor], a.encode_timeout, a.repeat)
        ww = run_child(["ww", str(path)], a.ww_timeout)
        gpu = run_child(["encode", str(path), "cuda", "budget", a.predictor], a.encode_timeout) if "cuda" in devices else None
        ratio = ww["cpu_s"] / enc["cpu_s"] if enc and ww else None
        row = (f"| {name} | {enc['params'] / 1e6:.1f} M | {enc['chunks_seen']:,} / {enc['chunks_total']:,} | "
               f"{enc['encode_s']:.1f} ({enc['cpu_s']:.1f}) | {enc['read_s']:.2f}{' (overlapped)' if enc.get('overlapped') else ''} | "
               f"{enc['encode_s'] - enc['read_s']:.2f} | "
               f"{enc['rss_mb']:.0f} |" if enc else f"| {name} | n/a | n/a | n/a | n/a | n/a | n/a |")
        ww_cell = f"{ww['ww_s']:.1f} ({ww['cpu_s']:.1f})" if ww else f"n/a (over {a.ww_timeout:.0f} s or failed)"
        row += f" {ww_cell} | {fmt(ww['rss_mb'] if ww else None, '.0f')} | {fmt(ratio)} |"
        if "cuda" in devices:
            row += f" {fmt(gpu['encode_s'] if gpu else None, '.2f')} |"
        print(row, flush=True)
        if enc:
            walls[name] = enc["encode_s"]
    if len(walls) > 1:
        hi, lo = max(walls, key=walls.__getitem__), min(walls, key=walls.__getitem__)
        print(f"\nEncode time, slowest over fastest in this run: {hi} {walls[hi]:.2f} s / {lo} {walls[lo]:.2f} s = "
              f"{walls[hi] / walls[lo]:.2f}x (the goal: within 2x)")
    if a.no_gap:
        return
    print("\n## Budgeted vs full encoding (same predictor)")
    print("| checkpoint | chunks budgeted / full | encode CPU s budgeted / full | cosine(embeddings) | abs delta accuracy |")
    print("|---|---|---|---|---|")
    for name in MID_SIZE:
        path = ensure(a.dir, name)
        b = run_child(["encode", str(path), "cpu", "budget", a.predictor], a.encode_timeout)
        f = run_child(["encode", str(path), "cpu", "full", a.predictor], a.encode_timeout)
        if not (b and f):
            print(f"| {name} | n/a | n/a | n/a | n/a |")
            continue
        cos = float(torch.nn.functional.cosine_similarity(torch.tensor(b["embedding"]), torch.tensor(f["embedding"]), 0))
        print(f"| {name} | {b['chunks_seen']:,} / {f['chunks_seen']:,} | {b['cpu_s']:.1f} / {f['cpu_s']:.1f} | "
              f"{cos:.6f} | {abs(b['accuracy'] - f['accuracy']):.2e} |", flush=True)


if __name__ == "__main__":
    main()
