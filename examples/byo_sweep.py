"""Bring your own checkpoints: a small hyperparameter sweep, saved the way a user's training script would.

Trains MLPs of mixed depth and width, and small CNNs with BatchNorm, on scikit-learn's digits; saves checkpoints
at a few epochs of every run as ``.safetensors``, and writes one labels CSV per family (``mlp.csv``, ``cnn.csv``)
in the format `sne train --labels` reads: path (relative to the CSV), accuracy, run, family, dataset, gap, and
the sweep's own columns as metadata. README, "Bring your own checkpoints", walks through the rest.

    python examples/byo_sweep.py --out byo --runs 24
"""
from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits
from torch import nn

SAVE_EPOCHS = (1, 3, 6)


def digits() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits 8x8 scaled to [0, 1], a fixed 1,400 / 397 train / test split."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32) / 16.0  # [1797, 8, 8]
    y = torch.tensor(d.target, dtype=torch.long)  # [1797]
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    x, y = x[perm], y[perm]
    return x[:1400], y[:1400], x[1400:], y[1400:]


def mlp(rng: random.Random) -> tuple[nn.Module, dict[str, object]]:
    widths = [rng.choice([16, 24, 32, 48, 64, 96]) for _ in range(rng.randint(1, 3))]
    layers: list[nn.Module] = [nn.Flatten()]
    d = 64
    for w in widths:
        layers += [nn.Linear(d, w), nn.ReLU()]
        d = w
    layers.append(nn.Linear(d, 10))
    return nn.Sequential(*layers), {"widths": "-".join(map(str, widths))}


def cnn(rng: random.Random) -> tuple[nn.Module, dict[str, object]]:
    c1, c2 = rng.choice([4, 6, 8]), rng.choice([6, 8, 12])
    net = nn.Sequential(
        nn.Unflatten(1, (1, 8)), nn.Conv2d(1, c1, 3, padding=1), nn.BatchNorm2d(c1), nn.ReLU(),
        nn.Conv2d(c1, c2, 3), nn.BatchNorm2d(c2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(4 * c2, 10),
    )
    return net, {"widths": f"{c1}-{c2}"}


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    net.eval()
    return float((net(x).argmax(1) == y).float().mean())


def sweep(out: Path, family: str, runs: int, seed: int) -> Path:
    """Train ``runs`` networks of ``family`` and write ``out/<family>.csv`` with their checkpoints."""
    xtr, ytr, xte, yte = digits()
    build = {"mlp": mlp, "cnn": cnn}[family]
    (out / family).mkdir(parents=True, exist_ok=True)
    rows = []
    for run in range(runs):
        rng = random.Random(f"{seed}-{family}-{run}")
        torch.manual_seed(rng.randrange(2**31))
        net, meta = build(rng)
        lr = 10 ** rng.uniform(-3.5, -1.5)
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        for epoch in range(1, max(SAVE_EPOCHS) + 1):
            net.train()
            order = torch.randperm(len(ytr))
            for i in range(0, len(order), 128):
                b = order[i : i + 128]
                loss = nn.functional.cross_entropy(net(xtr[b]), ytr[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if epoch in SAVE_EPOCHS:
                path = out / family / f"{family}-r{run:03d}-e{epoch}.safetensors"
                save_file({k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}, path)
                test, train = accuracy(net, xte, yte), accuracy(net, xtr, ytr)
                rows.append({
                    "path": path.relative_to(out).as_posix(), "accuracy": f"{test:.4f}", "run": f"{family}-{run}",
                    "family": family, "dataset": "digits", "gap": f"{train - test:.4f}", "epoch": epoch,
                    "lr": f"{lr:.2e}", **meta,
                })
    labels = out / f"{family}.csv"
    with open(labels, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    accs = [float(str(r["accuracy"])) for r in rows]
    print(f"{labels}: {len(rows)} checkpoints of {runs} runs, accuracy {min(accs):.2f}-{max(accs):.2f}")
    return labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("byo"))
    p.add_argument("--runs", type=int, default=40, help=f"runs per family (each saves {len(SAVE_EPOCHS)} checkpoints)")
    p.add_argument("--families", nargs="+", default=["mlp", "cnn"], choices=["mlp", "cnn"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if max(1, round(a.runs * 0.15)) * len(SAVE_EPOCHS) < 9:
        p.error("--runs: at least 20 per family, so the validation split has the 9 checkpoints calibration needs")
    for family in a.families:
        sweep(a.out, family, a.runs, a.seed)


if __name__ == "__main__":
    main()
