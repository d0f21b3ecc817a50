import os
import numpy as np
import pytest
import torch

from dsquant.cache import Cache
from dsquant.core.similarity import GradientEmbedding, GradientKernel
from dsquant.data import DataError, load_digits
from dsquant.embed import PixelEncoder, PrecomputedEncoder, ProxyEncoder, embed, make_encoder, softmax_delta

from reference import explicit_gradients


def test_softmax_delta_hand_computed():
    # softmax([0, ln 3]) = [0.25, 0.75]; label 0 -> [0.25 - 1, 0.75]
    d = softmax_delta(np.array([[0.0, np.log(3.0)]], dtype=np.float32), np.array([0]))
    assert np.allclose(d, [[-0.75, 0.75]], atol=1e-7)
    # rows of softmax - onehot sum to zero
    rng = np.random.default_rng(0)
    d = softmax_delta(rng.standard_normal((5, 4)).astype(np.float32) * 10, rng.integers(0, 4, 5))
    assert np.allclose(d.sum(axis=1), 0, atol=1e-6)


def test_gradient_gram_factorises_exactly(rng):
    n, c, d = 12, 3, 5
    delta = rng.standard_normal((n, c))
    feats = rng.standard_normal((n, d))
    g = explicit_gradients(delta, feats)
    assert np.allclose(g @ g.T, (delta @ delta.T) * (1 + feats @ feats.T))
    emb = GradientEmbedding(delta, feats)
    assert np.allclose(emb.norms(), np.linalg.norm(g, axis=1))
    kernel = GradientKernel(emb, dtype=np.float64)
    unit = g / np.linalg.norm(g, axis=1, keepdims=True)
    cos = unit @ unit.T
    assert np.allclose(kernel.rows(np.array([0, 5])), cos[[0, 5]])
    assert np.allclose(kernel.column_sums(), cos.sum(axis=0))


def _small_digits(n=240):
    d = load_digits()
    return d.subset(np.arange(n))


def test_proxy_is_deterministic_for_a_seed():
    ds = _small_digits()
    a = ProxyEncoder(epochs=1, width=8, seed=3).encode(ds)
    b = ProxyEncoder(epochs=1, width=8, seed=3).encode(ds)
    c = ProxyEncoder(epochs=1, width=8, seed=4).encode(ds)
    assert a.features.shape == (240, 32) and a.delta.shape == (240, 10)
    assert np.array_equal(a.features, b.features) and np.array_equal(a.delta, b.delta)
    assert not np.array_equal(a.features, c.features)
    assert a.kind == "gradient" and isinstance(a.for_binning(), GradientEmbedding)


def test_proxy_learns_the_digits():
    ds = load_digits()
    emb = ProxyEncoder(epochs=4, width=16, seed=0).encode(ds)
    # a few epochs on 1,797 8x8 digits: well above chance (0.1)
    assert emb.info["train_accuracy"] > 0.6


def test_embedding_cache_hits_on_the_same_data_and_config(tmp_path):
    ds = _small_digits()
    cache = Cache(tmp_path)
    enc = ProxyEncoder(epochs=1, width=8)
    first, rec1 = embed(enc, ds, cache)
    second, rec2 = embed(ProxyEncoder(epochs=1, width=8), ds, cache)
    assert not rec1["cached"] and rec2["cached"] and rec1["key"] == rec2["key"]
    assert np.array_equal(first.features, second.features) and second.kind == "gradient"
    _, rec3 = embed(ProxyEncoder(epochs=2, width=8), ds, cache)
    assert rec3["key"] != rec1["key"] and not rec3["cached"]
    _, rec4 = embed(enc, ds.subset(np.arange(200)), cache)
    assert rec4["key"] != rec1["key"]


def test_proxy_checkpoint_round_trip_and_wrong_checkpoint(tmp_path):
    ds = _small_digits()
    enc = ProxyEncoder(epochs=1, width=8)
    emb = enc.encode(ds)
    torch.save(enc.model.state_dict(), tmp_path / "proxy.pt")
    again = ProxyEncoder(width=8, checkpoint=tmp_path / "proxy.pt").encode(ds)
    assert np.allclose(again.features, emb.features, atol=1e-5)
    with pytest.raises(DataError, match="proxy.pt: not a proxy checkpoint"):
        ProxyEncoder(width=16, checkpoint=tmp_path / "proxy.pt").encode(ds)


def test_pixels_and_precomputed(tmp_path):
    ds = _small_digits(10)
    px = PixelEncoder().encode(ds)
    assert px.features.shape == (10, 64) and px.features.max() == 1.0
    np.save(tmp_path / "f.npy", np.ones((10, 3), np.float32))
    assert make_encoder(f"features:{tmp_path / 'f.npy'}").encode(ds).features.shape == (10, 3)
    np.save(tmp_path / "g.npy", np.ones((9, 3), np.float32))
    with pytest.raises(DataError, match="9 feature rows do not match the 10 samples"):
        PrecomputedEncoder(tmp_path / "g.npy").encode(ds)
    with pytest.raises(ValueError, match="encoder"):
        make_encoder("clip")


@pytest.mark.parametrize("kind", ["dense", "gradients"])
def test_kernel_sums_are_exact_float64_whatever_the_row_dtype(rng, kind):
    # the kernels keep float32 features as given and take them exactly into float64: column
    # sums and sums over picked samples match an explicit float64 computation to rounding, for
    # both row precisions, after restricting the pool; rows in float32 stay within row_error
    from dsquant.core.similarity import make_kernel
    from dsquant.core._steps import add_rows

    n = 300
    if kind == "gradients":
        x = GradientEmbedding(rng.standard_normal((n, 7)).astype(np.float32), rng.random((n, 33)).astype(np.float32))
        g = explicit_gradients(x.delta.astype(np.float64), x.features.astype(np.float64))
    else:
        x = rng.standard_normal((n, 65)).astype(np.float32)
        g = x.astype(np.float64)
    g[:] = g / np.linalg.norm(g, axis=1, keepdims=True)
    keep = rng.random(n) < 0.7
    picks = rng.choice(int(keep.sum()), 40, replace=False)
    for dtype in (np.float32, np.float64):
        kernel = make_kernel(x, dtype=dtype)
        assert np.allclose(kernel.column_sums(), g @ g.sum(axis=0), rtol=0, atol=1e-12)
        kernel = kernel.restrict(keep)
        acc = kernel.accumulator()
        add_rows(acc.stored(picks), acc.first, acc.scale, acc.second, acc.s1, acc.s2)
        part = g[keep]
        assert np.allclose(kernel.cos_sums(acc), part @ part[picks].sum(axis=0), rtol=0, atol=1e-12)
        rows = kernel.restrict(np.ones(len(part), bool), rows_only=True).rows(picks[:5])
        assert rows.dtype == dtype
        assert np.abs(rows - part[picks[:5]] @ part.T).max() <= kernel.row_error


_REPEAT = """
import sys, numpy as np, torch
torch.set_num_threads(int(sys.argv[1]))
import dsquant.training as tr
tr.set_threads = lambda: None
from dsquant.data import load_digits
from dsquant.embed.proxy import proxy_resnet
ds = load_digits().subset(np.arange(120))
params = []
for _ in range(4):
    torch.manual_seed(0)
    m = proxy_resnet(1, 10, 8, 4, np.full(1, .5), np.full(1, .25))
    tr.fit(m, ds.images, ds.labels, tr.TrainConfig(epochs=1, seed=0, augment=False))
    params.append(torch.cat([p.detach().flatten() for p in m.parameters()]))
print(max(float((p - params[0]).abs().max()) for p in params))
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_proxy_training_is_repeatable_at_small_widths(threads):
    """oneDNN's strided 1x1 weight gradient with 2-7 input channels (channels_last) was wrong and
    wrote out of bounds: width-4 proxies differed between identical runs and crashed the process
    on one thread. The shortcut now subsamples first (models.BasicBlock)."""
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-c", _REPEAT, str(threads)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert float(proc.stdout.strip()) == 0.0


def test_subsampled_shortcut_is_the_strided_convolution():
    import torch

    from dsquant.models import BasicBlock

    torch.manual_seed(0)
    block = BasicBlock(4, 8, stride=2).eval()
    x = torch.randn(3, 4, 9, 9)
    conv, bn = block.shortcut
    assert torch.allclose(block._shortcut(x), bn(torch.nn.functional.conv2d(x, conv.weight, stride=2)), atol=1e-6)


def test_one_training_loop_with_hooks():
    """fit, the SimCLR encoder and the tiny MAE share training.train_loop: its on_step hook sees
    every step's batch (sorted indices, each sample once per epoch) and the logits, and
    watching changes nothing of the training."""
    import torch

    from dsquant.data import load_digits
    from dsquant.models import Normalize, proxy_resnet
    from dsquant.training import TrainConfig, fit

    ds = load_digits()
    x, y = ds.images[:300], ds.labels[:300]
    mean, std = Normalize.stats(x)
    seen = []
    epochs = []

    def model():
        torch.manual_seed(0)
        return proxy_resnet(1, 10, 8, 4, mean, std)

    cfg = TrainConfig(epochs=2, batch_size=128, seed=3)
    a = fit(model(), x, y, cfg, "cpu", on_step=lambda e, idx, z: seen.append((e, idx.copy(), tuple(z.shape))), on_epoch=lambda e, loss: epochs.append(e))
    b = fit(model(), x, y, cfg, "cpu")
    # 300 samples, batches of 128: two full batches per epoch, the last partial one dropped
    assert [(e, len(i), s) for e, i, s in seen] == [(0, 128, (128, 10))] * 2 + [(1, 128, (128, 10))] * 2 and epochs == [0, 1]
    for e in (0, 1):
        both = np.concatenate([i for k, i, _ in seen if k == e])
        assert len(np.unique(both)) == 256 and all(np.all(np.diff(i) > 0) for _, i, _ in seen)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(pa, pb)


def test_threads_follow_the_cpu_affinity_and_omp_num_threads(monkeypatch):
    from dsquant.training import available_cores, set_threads

    if not hasattr(os, "sched_getaffinity"):
        pytest.skip("no CPU affinity on this platform")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 3, 5})
    assert available_cores() == 3  # the cores this process may use, not os.cpu_count()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert available_cores() == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "8")
    assert available_cores() == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "junk")
    assert available_cores() == 3
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        set_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
