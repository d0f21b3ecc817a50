"""The Ray engine: embedding and bin generation on a Ray cluster (``pip install "dsquant[ray]"``).

What is exact and what is not:

* :func:`ray_embed` writes the same embedding store as ``dsquant embed`` on one machine: an
  actor pool, each actor holding the encoder and embedding whole shards
  (:func:`dsquant.embed.store.write_shard`), so ids, order and file layout are the same and the
  features equal to float tolerance (the encoder's batches are the same; only the device may
  differ). A killed job resumes from the store: finished shards are skipped.
* :func:`ray_generate_bins` is :func:`dsquant.generate_bins` with every class (pool) binned by a
  Ray task: the same checks and bin sizes (:func:`~dsquant.core.bins.plan_pools`), the same
  greedy on each pool (:func:`~dsquant.core.bins.pool_bins`), the same assembly. Identical bins.
* :func:`partitioned_engine` bins one unlabelled pool too large for a machine by partitioned
  greedy (:func:`dsquant.core.partitioned.partitioned_bins`), its parts as Ray tasks or one
  after the other here: an approximation, its quality measured by the GraphCut objective.

Tasks read their rows where the data lives: an embedding store
(:class:`~dsquant.embed.store.ShardedArray`, paths only cross the network, so every node must see
the store's directory, e.g. on a shared file system) or an in-memory array put once into Ray's
object store. Actors and tasks ask for one CPU each (one GPU per embedding actor when the
cluster has GPUs), and the embedding pool leaves one CPU of the cluster free.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from functools import partial

import numpy as np

__all__ = ["connect", "partitioned_engine", "ray_embed", "ray_engine", "ray_generate_bins"]


def _ray():
    try:
        import ray
    except ImportError:
        raise ImportError("the Ray engine needs Ray: pip install 'dsquant[ray]'") from None
    return ray


@contextmanager
def _task_errors(ray):
    """Inside, a failed task's own exception is re-raised (its one-line message, such as a
    DataError naming an unreadable image) instead of Ray's multi-line wrapper."""
    try:
        yield
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, BaseException):
            raise cause from None
        raise


def _get(ray, refs):
    """``ray.get(refs)`` with :func:`_task_errors`."""
    with _task_errors(ray):
        return ray.get(refs)


def connect(address: str | None = None, num_cpus: int | None = None):
    """Join the Ray cluster at ``address`` (``"auto"``: the one this machine belongs to, as
    ``ray start`` or KubeRay set it up), or start a local one with ``num_cpus`` when ``address``
    is None. A session already connected is kept. Returns the ``ray`` module.

    Raises:
        ImportError: when Ray is not installed.
    """
    ray = _ray()
    if not ray.is_initialized():
        kwargs = {"address": address} if address else {"num_cpus": num_cpus}
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False, **kwargs)
    return ray


class _EmbedWorker:
    """An actor: the encoder loaded once, shards embedded on request."""

    def __init__(self, dataset, encoder, root: str, manifest: dict) -> None:
        if hasattr(encoder, "num_workers"):
            encoder.num_workers = 0  # the actor pool is the parallelism
        self.dataset, self.encoder, self.root, self.manifest = dataset, encoder, root, manifest
        self.config = None  # encoder.config(), once per actor (it may hash the weights)

    def shard(self, k: int) -> dict:
        """Embed and write shard ``k``; its record, plus this actor's peak RSS in MB."""
        import resource

        from .embed.store import write_shard

        if self.config is None:
            self.config = self.encoder.config()
        rec = write_shard(self.root, self.manifest, self.dataset, self.encoder, k, config=self.config)
        return dict(rec, actor_peak_rss_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))


def ray_embed(dataset, encoder, out, shard_size: int = 10_000, dtype: str = "float16", address: str | None = None, actors: int | None = None, log=None) -> dict:
    """``dsquant embed --engine ray``: the store of :func:`dsquant.embed.store.embed_to_store`,
    its unfinished shards embedded by a pool of Ray actors.

    Args:
        dataset, encoder, out, shard_size, dtype: as :func:`~dsquant.embed.store.embed_to_store`.
        address: the cluster (None: a local one on this machine's cores).
        actors: actors in the pool (default: one per GPU when the cluster has GPUs, else its CPUs
            less one, at least one).
        log: called with one line per shard written.

    Returns:
        As :func:`~dsquant.embed.store.embed_to_store`.
    """
    from ray.util import ActorPool

    from .embed.store import pending_shards, prepare_store, shard_line, store_summary

    ray = connect(address)
    root, manifest = prepare_store(dataset, encoder, out, shard_size, dtype)
    todo, done = pending_shards(root, manifest)
    t0 = time.perf_counter()
    if todo:
        res = ray.cluster_resources()
        gpus = int(res.get("GPU", 0))
        n = actors or (gpus if gpus else max(1, int(res.get("CPU", 1)) - 1))
        worker = ray.remote(num_cpus=1, num_gpus=1 if gpus else 0)(_EmbedWorker)
        data_ref, enc_ref = ray.put(dataset), ray.put(encoder)
        actors_made = [worker.remote(data_ref, enc_ref, str(root), manifest) for _ in range(min(n, len(todo)))]
        try:
            with _task_errors(ray):
                for rec in ActorPool(actors_made).map_unordered(lambda a, k: a.shard.remote(k), todo):
                    if log is not None:
                        log(shard_line(rec) + f" (actor peak RSS {rec['actor_peak_rss_mb']} MB)")
        finally:  # their CPUs (and GPUs) go back to the cluster now, not when garbage-collected
            for actor in actors_made:
                ray.kill(actor)
    return store_summary(root, manifest, done, len(todo), time.perf_counter() - t0)


def _pool_task(features, group: np.ndarray, sizes: np.ndarray, lam: float, block_size, memory: int, dtype, ordered: bool) -> list[np.ndarray]:
    """One pool's bins, in global indices (a Ray task)."""
    from .core.bins import pool_bins
    from .core.similarity import GradientEmbedding

    part = features.take(group) if isinstance(features, GradientEmbedding) else np.asarray(features[group])
    return [group[b] for b in pool_bins(part, sizes, lam=lam, block_size=block_size, memory=memory, dtype=dtype, ordered=ordered)]


def ray_generate_bins(features, n_bins: int, labels=None, *, lam: float = 1.0, block_size=None, memory: int = 2**31, dtype: type = np.float32, n_jobs=None, progress=None, return_rank: bool = False, address: str | None = None):
    """:func:`dsquant.generate_bins` with one Ray task per class: the same arguments, checks and
    result (the bins are identical; ``n_jobs`` is ignored, the cluster sets the parallelism;
    ``progress`` is called per finished class).

    Raises:
        ValueError: as :func:`dsquant.generate_bins`.
        ImportError: when Ray is not installed.
    """
    from .core.bins import assemble_bins, plan_pools

    n, groups, sizes = plan_pools(features, n_bins, labels, block_size=block_size, memory=memory, dtype=dtype)
    ray = connect(address)
    ref = ray.put(features)  # a store's ShardedArray travels as paths; an array once
    task = ray.remote(num_cpus=1)(_pool_task)
    pending = {task.remote(ref, g, sizes[i], lam, block_size, memory, dtype, return_rank): i for i, g in enumerate(groups)}
    per_pool: list = [None] * len(groups)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        per_pool[i] = _get(ray, ready[0])
        if progress is not None:
            progress(len(groups[i]))
    return assemble_bins(per_pool, n, n_bins, return_rank)


def _ray_map(ray, fn, tasks: list[tuple]) -> list:
    remote = ray.remote(num_cpus=1)(fn)
    refs = {}
    out = []
    for t in tasks:
        f = t[0]
        if id(f) not in refs:
            refs[id(f)] = ray.put(f)
        out.append(remote.remote(refs[id(f)], *t[1:]))
    return _get(ray, out)


def partitioned_engine(n_parts: int, seed: int = 0, oversample: float = 2.0, use_ray: bool = False, address: str | None = None, union_greedy: bool = True):
    """A bin engine (``generate_bins``' signature) that bins one unlabelled pool by partitioned
    greedy (:func:`dsquant.core.partitioned.partitioned_bins`, with or without its union step),
    its parts as Ray tasks when ``use_ray``, else one after the other. Labelled data is refused
    (bin it by class, exactly).
    """
    from .core.partitioned import partitioned_bins

    def engine(features, n_bins, labels=None, *, lam=1.0, block_size=None, memory=2**31, dtype=np.float32, n_jobs=None, progress=None, return_rank=False):
        if labels is not None:
            raise ValueError("partitions: partitioned greedy bins one unlabelled pool; labelled data is binned exactly, class by class (drop --partitions)")
        mapper = None
        if use_ray:
            ray = connect(address)
            mapper = partial(_ray_map, ray)
        from .core.bins import check_finite

        check_finite(features)
        return partitioned_bins(features, n_bins, n_parts, seed=seed, lam=lam, oversample=oversample, dtype=dtype, memory=min(memory, 2**30), return_rank=return_rank, map_parts=mapper, union_greedy=union_greedy)

    return engine


def ray_engine(address: str | None = None):
    """The exact Ray bin engine for :class:`dsquant.methods.Context` (``compress(engine="ray")``)."""
    return partial(ray_generate_bins, address=address)
