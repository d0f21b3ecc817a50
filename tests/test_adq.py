import numpy as np
import pytest
import torch

from dsquant.artifact import read_output
from dsquant.cli import main
from dsquant.data import load_digits
from dsquant.embed.diversity import SimCLREncoder, nt_xent, random_resized_crop_flip, two_view_embeddings
from dsquant.pipeline import compress


def test_nt_xent_hand_computed():
    # two pairs of orthonormal embeddings: each row's partner has cos 1, the others cos 0;
    # with temperature 1 every row's loss is -log(e / (e + 2)) over its 3 candidates
    za = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = -np.log(np.e / (np.e + 2))
    assert float(nt_xent(za, za.clone(), temperature=1.0)) == pytest.approx(expected, rel=1e-6)


def test_augmentation_is_seeded_and_keeps_shape():
    x = torch.rand(6, 3, 16, 16)
    a = random_resized_crop_flip(x, torch.Generator().manual_seed(1))
    b = random_resized_crop_flip(x, torch.Generator().manual_seed(1))
    c = random_resized_crop_flip(x, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    # the full crop without a flip is the identity: scale (1, 1), ratio (1, 1)
    gen = torch.Generator().manual_seed(0)
    ident = random_resized_crop_flip(x, gen, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    flipped = x.flip(3)
    for i in range(6):
        assert torch.allclose(ident[i], x[i], atol=1e-5) or torch.allclose(ident[i], flipped[i], atol=1e-5)


def test_two_views_differ_but_come_from_the_same_images():
    images = load_digits().images[:40]
    a, b = two_view_embeddings(lambda x: x.flatten(1), images, seed=0)
    assert a.shape == b.shape == (40, 64) and not np.allclose(a, b)
    a2, _ = two_view_embeddings(lambda x: x.flatten(1), images, seed=0)
    assert np.array_equal(a, a2)


def test_simclr_training_lowers_its_loss():
    images = load_digits().images[:512]
    enc = SimCLREncoder(epochs=3, max_samples=512, width=8, batch_size=128, lr=0.3, seed=0)
    enc.train(images)
    assert enc.info["last_loss"] < enc.info["first_loss"]


def test_adq_end_to_end_on_digits(tmp_path, capsys):
    out = tmp_path / "adq"
    code = main(["compress", "digits", "--method", "adq", "--alpha", "0.7", "--diversity-encoder", "proxy", "--bins", "5", "--epochs", "1", "--width", "8", "--ratio", "0.1", "--out", str(out), "--quiet"])
    assert code == 0
    m = read_output(out).manifest
    adq = m["adq"]
    assert adq["alpha"] == 0.7 and len(adq["per_bin"]) == 5
    imp = np.array([b["importance"] for b in adq["per_bin"]])
    shares = np.array([b["share"] for b in adq["per_bin"]])
    sizes = np.array([b["size"] for b in adq["per_bin"]])
    assert imp.sum() == pytest.approx(1) and shares.sum() == pytest.approx(1)
    assert shares == pytest.approx(0.7 * imp + 0.3 * sizes / sizes.sum())
    assert sum(b["count"] for b in adq["per_bin"]) == 144 == m["selection"]["n_selected"]
    assert [b["selected"] for b in m["selection"]["bins"]] == [b["count"] for b in adq["per_bin"]]
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "ADQ (alpha 0.7)" in text and "I_hat" in text


def test_adq_with_alpha_zero_is_dq():
    digits = load_digits()
    common = dict(ratio=0.1, n_bins=4, epochs=1, proxy_width=8, seed=3)
    dq = compress(digits, method="dq", **common)
    adq = compress(digits, method="adq", alpha=0.0, diversity_encoder="proxy", **common)
    assert np.array_equal(dq.indices, adq.indices)


def test_adq_on_features_uses_embedding_scores(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "f.npz", features=rng.standard_normal((200, 6)).astype(np.float32), labels=np.repeat([0, 1], 100))
    res = compress(tmp_path / "f.npz", method="adq", ratio=0.2, n_bins=4)
    assert len(res.indices) == 40
    assert "embedding" in res.manifest["adq"]["representativeness"]
    own = rng.random(200)
    res2 = compress(tmp_path / "f.npz", method="adq", ratio=0.2, n_bins=4, representativeness=own)
    rep = [b["rep"] for b in res2.manifest["adq"]["per_bin"]]
    assert rep == pytest.approx([own[b].mean() for b in res2.bins])
    with pytest.raises(ValueError, match="texture"):
        compress(tmp_path / "f.npz", method="adq", representativeness="texture")
