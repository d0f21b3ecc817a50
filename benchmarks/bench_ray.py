"""The Ray engine on a local cluster: embedding into a store and binning it, per task.

    python benchmarks/bench_ray.py DATA --model TINY_HF_DIR [--num-cpus 2] [--shard-size 10000]

Starts ``ray.init(num_cpus=...)`` here, embeds DATA (an image folder or plain tar) into a fresh
store with :func:`dsquant.distributed.ray_embed` (the actor pool; each shard's seconds and the
actor's peak RSS), then the same store on one process with
:func:`dsquant.embed.store.embed_to_store` for comparison, checks both stores hold the same
features, and bins the store with :func:`dsquant.distributed.ray_generate_bins` (one task per
class: each task's seconds and peak RSS) against :func:`dsquant.generate_bins` in this process
(the bins must be identical). ``--model`` is a transformers vision model folder (a tiny random
one is made there when it does not exist: speed of the pipeline, not of a real encoder).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def _tiny(path: Path) -> None:
    import torch
    from transformers import ResNetConfig, ResNetModel

    torch.manual_seed(0)
    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1])).save_pretrained(path)
    (path / "preprocessor_config.json").write_text(json.dumps({"size": {"shortest_edge": 36}, "crop_size": {"height": 32, "width": 32}, "image_mean": [0.5] * 3, "image_std": [0.25] * 3}))


def _timed_pool(features, group, sizes, n_bins):
    import resource

    from dsquant.distributed import _pool_task

    t = time.perf_counter()
    out = _pool_task(features, group, sizes, 1.0, None, 2**31, np.float32, False)
    return out, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data")
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument("--shard-size", type=int, default=10_000)
    args = p.parse_args()
    if not args.model.exists():
        _tiny(args.model)

    import ray

    from dsquant import generate_bins
    from dsquant.core.bins import assemble_bins, plan_pools
    from dsquant.data import read_dataset
    from dsquant.distributed import connect, ray_embed
    from dsquant.embed import make_encoder
    from dsquant.embed.store import embed_to_store, open_store

    t = time.perf_counter()
    connect(num_cpus=args.num_cpus)
    print(f"ray.init(num_cpus={args.num_cpus}): {time.perf_counter() - t:.1f} s; cluster {ray.cluster_resources()}")
    ds = read_dataset(args.data, stream=True)
    work = Path(tempfile.mkdtemp(prefix="dsq-ray-"))
    try:
        lines: list[str] = []
        t = time.perf_counter()
        r = ray_embed(ds, make_encoder(f"hf:{args.model}", "images", precision="float32"), work / "ray", shard_size=args.shard_size, log=lines.append)
        print(f"ray_embed: {len(ds)} images, {r['written']} shards in {time.perf_counter() - t:.1f} s")
        for line in sorted(lines):
            print("  " + line)
        t = time.perf_counter()
        embed_to_store(ds, make_encoder(f"hf:{args.model}", "images", precision="float32"), work / "local", shard_size=args.shard_size)
        print(f"embed_to_store (one process, {ds.__class__.__name__}): {time.perf_counter() - t:.1f} s")
        a, b = open_store(work / "ray"), open_store(work / "local")
        diff = float(np.abs(np.asarray(a.features) - np.asarray(b.features)).max())
        print(f"the two stores: same ids {a.ids.tolist() == b.ids.tolist()}, max |difference| of features {diff:.2e}")

        n, groups, sizes = plan_pools(a.features, 10, a.labels)
        task = ray.remote(num_cpus=1)(_timed_pool)
        t = time.perf_counter()
        results = ray.get([task.remote(a.features, g, sizes[i], 10) for i, g in enumerate(groups)])
        wall = time.perf_counter() - t
        bins = assemble_bins([r[0] for r in results], n, 10)
        print(f"ray bins: {len(groups)} class tasks in {wall:.1f} s wall; per task " + ", ".join(f"{s:.2f} s / {m:.0f} MB" for _, s, m in results))
        t = time.perf_counter()
        local = generate_bins(a.features, 10, a.labels)
        print(f"generate_bins in this process: {time.perf_counter() - t:.1f} s; identical: {all(np.array_equal(x, y) for x, y in zip(bins, local))}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
        ray.shutdown()


if __name__ == "__main__":
    main()
