"""Is the low-budget protocol trained to convergence? The training loss per epoch of each
architecture of the ``lowbudget`` preset on class-balanced random subsets of 1, 10 and 50
images per class (issue 13, item 2: "show the curve once"), and the accuracy on a validation
split carved from the training set (never the test split).

    python benchmarks/lowbudget_curve.py ../shared/data/fashion-mnist --out docs/results/lowbudget_loss.png

The same for the ``pruning`` preset at keep ratios (fractions of the training pool), with
several training lengths to see where the validation accuracy stops rising:

    python benchmarks/lowbudget_curve.py ../shared/data/fashion-mnist --preset pruning --ratios 0.3 0.9 --epochs 5 10 20 --out docs/results/pruning_loss.png
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--per-class", nargs="+", type=int, help="budgets in images per class (default 1 10 50 without --ratios)")
    p.add_argument("--ratios", nargs="+", type=float, default=[], help="budgets as keep ratios of the training pool")
    p.add_argument("--epochs", nargs="+", type=int, help="training lengths to compare (default: the preset's)")
    p.add_argument("--preset", default="lowbudget")
    p.add_argument("--arch", nargs="+")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="plot (.png); a .json of the curves is written beside it")
    args = p.parse_args()

    import torch

    from dsquant.cache import Cache
    from dsquant.data import read_dataset
    from dsquant.evaluate.harness import PRESETS
    from dsquant.evaluate.archs import get_architecture
    from dsquant.evaluate.protocols import validation_split
    from dsquant.models import Normalize
    from dsquant.training import TrainConfig, fit, predict

    train = read_dataset(args.data, cache=Cache())
    pool, val = validation_split(train, seed=0)
    preset = PRESETS[args.preset]
    archs = args.arch or list(preset.archs)
    curves = {}
    per_class = args.per_class if args.per_class is not None else ([] if args.ratios else [1, 10, 50])
    budgets = [(f"{m}/class", lambda c, m=m: m) for m in per_class]
    budgets += [(f"{100 * r:g} %", lambda c, r=r: int(round(r * np.sum(pool.labels == c)))) for r in args.ratios]
    for label, size in budgets:
        rng = np.random.default_rng(args.seed)
        idx = np.sort(np.concatenate([rng.choice(np.flatnonzero(pool.labels == c), size(c), replace=False) for c in range(len(pool.classes))]))
        x, y = pool.images[idx], pool.labels[idx]
        for arch, epochs in [(a, e) for a in archs for e in (args.epochs or [None])]:
            spec = get_architecture(arch)
            if spec.build is None:
                continue
            h, w, c = pool.image_shape
            mean, std = Normalize.stats(x)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(args.seed)
                model = spec.build(c, len(pool.classes), min(h, w), mean, std)
            n = len(idx)
            cfg = TrainConfig(epochs=epochs or preset.epochs_for(n), batch_size=preset.batch_for(n / len(pool), n), lr=preset.lr, momentum=preset.momentum, weight_decay=preset.weight_decay, nesterov=preset.nesterov, schedule=preset.schedule, augment=preset.augment, seed=args.seed)
            losses: list[float] = []
            t = time.perf_counter()
            fit(model, x, y, cfg, on_epoch=lambda e, loss: losses.append(loss))
            logits, _ = predict(model, val.images)
            acc = float((logits.argmax(1) == val.labels).mean())
            key = f"{arch} {label}" + (f" {epochs} ep" if args.epochs else "")
            curves[key] = {"loss": losses, "val_accuracy": acc, "epochs": cfg.epochs, "batch_size": cfg.batch_size, "seconds": round(time.perf_counter() - t, 1)}
            tail = np.mean(losses[-max(1, len(losses) // 10):])
            mid = np.mean(losses[len(losses) // 2 - max(1, len(losses) // 20): len(losses) // 2 + 1])
            print(f"{key:<26} epochs {cfg.epochs:>4} batch {cfg.batch_size:>3}  loss first {losses[0]:.3f} half-way {mid:.4f} last-10% {tail:.4f}  val acc {100 * acc:.2f}  {curves[key]['seconds']} s", flush=True)
    if args.out:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for key, c in curves.items():
            ax.plot(np.linspace(0, 1, len(c["loss"])), c["loss"], label=f"{key} ({c['epochs']} ep)")
        ax.set_xlabel("fraction of training")
        ax.set_ylabel("training loss (epoch mean)")
        ax.set_yscale("log")
        ax.set_title(f"{args.preset} preset: training loss on random subsets")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(args.out, dpi=120)
        with open(str(args.out).rsplit(".", 1)[0] + ".json", "w") as f:
            json.dump(curves, f, indent=1)


if __name__ == "__main__":
    main()
