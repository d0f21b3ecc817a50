"""Throughput of the proxy encoder and of the evaluation architectures on 2 CPU cores
(training and inference images/s on 32x32x3 batches), to size CPU defaults.

    python benchmarks/bench_proxy.py
"""

import time

import numpy as np
import torch
import torch.nn.functional as F

from dsquant.evaluate.archs import ARCHITECTURES
from dsquant.models import proxy_resnet
from dsquant.training import augment, set_threads


def throughput(model, batch=128, steps=6, size=32):
    set_threads()
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    gen = torch.Generator().manual_seed(0)
    model.train()
    for i in range(steps + 2):
        if i == 2:
            t = time.perf_counter()
        loss = F.cross_entropy(model(augment(x, gen, 4)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    train = batch * steps / (time.perf_counter() - t)
    model.eval()
    with torch.no_grad():
        xi = torch.rand(1024, 3, size, size).contiguous(memory_format=torch.channels_last)
        model(xi)
        t = time.perf_counter()
        model(xi)
        infer = 1024 / (time.perf_counter() - t)
    return train, infer


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| model | parameters | train img/s | inference img/s |")
    print("|---|---|---|---|")
    models = {"proxy (width 32)": proxy_resnet(3, 10, 32, 32)}
    for name, arch in ARCHITECTURES.items():
        if arch.build is not None:
            models[name] = arch.build(3, 10, 32, np.full(3, 0.5), np.full(3, 0.25))
    for name, model in models.items():
        params = sum(p.numel() for p in model.parameters())
        tr, inf = throughput(model)
        print(f"| {name} | {params / 1e6:.2f}M | {tr:,.0f} | {inf:,.0f} |")


if __name__ == "__main__":
    main()
