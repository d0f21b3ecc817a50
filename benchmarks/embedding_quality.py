"""How much meaning does an embedding carry? k-nearest-neighbour and linear-probe accuracy on
the test split (issue 14, item 1: "find out first").

For each encoder: embed the training split (through dsquant's cache) and the test split, then
* kNN: cosine k-nearest-neighbour vote (k = 1 and 20) of every test sample among the training
  samples' embeddings;
* linear probe: multinomial logistic regression (scikit-learn, standardised features, C = 1,
  at most 200 iterations) trained on the training embeddings, tested on the test embeddings.
Raw pixels are the reference a useful embedding must beat. Nothing here is tuned on the test
split: k, C and the iterations are fixed in advance.

    python benchmarks/embedding_quality.py ../shared/data/cifar10/cifar10-jpeg.tar
    python benchmarks/embedding_quality.py ../shared/data/fashion-mnist --encoders pixels proxy
    python benchmarks/embedding_quality.py ../shared/data/fashion-mnist --encoders kmeans kmeans:400
    python benchmarks/embedding_quality.py ../shared/data/cifar10/cifar10-jpeg.tar --encoders proxy:30 simclr:10

``proxy[:EPOCHS]``: the proxy (default 5 epochs; 30 is close to convergence), its penultimate
features. ``simclr[:EPOCHS]``: a SimCLR encoder trained EPOCHS passes over every training image
(no labels), its backbone features. ``kmeans[:K]``: single-layer k-means features (Coates et al. 2011, dsquant.embed.kmeans; K
centroids, 4 K features), the dictionary learned on the training split without labels.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def knn_accuracy(train: np.ndarray, train_labels: np.ndarray, test: np.ndarray, test_labels: np.ndarray, k: int, chunk: int = 1024) -> float:
    """Cosine kNN majority vote (ties to the lowest class id)."""
    a = train / np.maximum(np.linalg.norm(train, axis=1, keepdims=True), 1e-12)
    b = test / np.maximum(np.linalg.norm(test, axis=1, keepdims=True), 1e-12)
    n_classes = int(train_labels.max()) + 1
    correct = 0
    for s in range(0, len(b), chunk):
        sim = b[s : s + chunk] @ a.T
        top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k > 1 else sim.argmax(1)[:, None]
        votes = np.zeros((len(top), n_classes))
        np.add.at(votes, (np.repeat(np.arange(len(top)), top.shape[1]), train_labels[top].ravel()), 1)
        correct += int((votes.argmax(1) == test_labels[s : s + chunk]).sum())
    return correct / len(b)


def linear_probe(train, train_labels, test, test_labels) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(train)
    clf = LogisticRegression(C=1.0, max_iter=200).fit(scaler.transform(train), train_labels)
    return float(clf.score(scaler.transform(test), test_labels))


def embeddings(name: str, train, test, cache):
    """(train, test) float32 embeddings of encoder ``name``, and the seconds it took."""
    from dsquant.embed import ProxyEncoder, embed, fitted_proxy
    from dsquant.training import predict

    t = time.perf_counter()
    if name == "pixels":
        f = lambda ds: ds.images.reshape(len(ds), -1).astype(np.float32) / 255.0  # noqa: E731
        return f(train), f(test), time.perf_counter() - t
    if name.startswith("proxy"):
        epochs = int(name.split(":")[1]) if ":" in name else 5
        enc = ProxyEncoder(epochs=epochs)  # the default (gradient) run: features are its penultimate features
        emb, _ = embed(enc, train, cache=cache)
        model = fitted_proxy(enc, train, cache)
        _, test_feats = predict(model, test.images, with_features=True)
        return emb.features, test_feats.astype(np.float32), time.perf_counter() - t
    if name == "kmeans" or name.startswith("kmeans:"):
        # Coates et al. (2011) k-means features: the dictionary is learned on the training split
        # only (through the cache, like the proxy), then the test split is transformed with it
        from dsquant.embed.kmeans import KMeansFeatureEncoder

        enc = KMeansFeatureEncoder(n_clusters=int(name.split(":")[1])) if ":" in name else KMeansFeatureEncoder()
        emb, _ = embed(enc, train, cache=cache, progress=True)
        if not enc.fitted:  # the training embedding came from the cache: learn the same dictionary again
            enc.fit(train.images)
        return emb.features, enc.transform(test.images, progress=True), time.perf_counter() - t
    if name == "simclr" or name.startswith("simclr:"):
        # SimCLR (NT-Xent, dsquant.embed.diversity.SimCLREncoder, ADQ's diversity encoder) trained
        # longer than ADQ's default 2 epochs on 20,000 images: EPOCHS passes over every training image
        from dsquant.embed.diversity import SimCLREncoder

        epochs = int(name.split(":")[1]) if ":" in name else 2
        enc = SimCLREncoder(epochs=epochs, max_samples=len(train))
        enc.train(train.images, int(train.labels.max()) + 1, progress=True)
        feats = lambda ds: predict(enc.model.backbone, ds.images, with_features=True)[1].astype(np.float32)  # noqa: E731
        return feats(train), feats(test), time.perf_counter() - t
    raise SystemExit(f"unknown encoder {name!r}: pixels, proxy, proxy:EPOCHS, simclr, simclr:EPOCHS, kmeans or kmeans:K")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("data")
    p.add_argument("--encoders", nargs="+", default=["pixels", "proxy"])
    args = p.parse_args()
    from dsquant.cache import Cache
    from dsquant.data import read_dataset

    cache = Cache()
    train, test = read_dataset(args.data, "train", cache=cache), read_dataset(args.data, "test", cache=cache)
    print(f"{args.data}: {len(train)} train, {len(test)} test")
    print("| encoder | dim | kNN k=1 | kNN k=20 | linear probe | embed seconds (cached or not) | probe seconds |")
    print("|---|---|---|---|---|---|---|")
    for name in args.encoders:
        a, b, secs = embeddings(name, train, test, cache)
        k1 = knn_accuracy(a, train.labels, b, test.labels, 1)
        k20 = knn_accuracy(a, train.labels, b, test.labels, 20)
        t = time.perf_counter()
        lp = linear_probe(a, train.labels, b, test.labels)
        print(f"| {name} | {a.shape[1]} | {100 * k1:.2f} | {100 * k20:.2f} | {100 * lp:.2f} | {secs:.1f} | {time.perf_counter() - t:.1f} |", flush=True)


if __name__ == "__main__":
    main()
