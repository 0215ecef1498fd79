"""Stability-driven NMF (staNMF): choose K by the instability of bootstrap dictionaries.

For each K, NMF is fitted to many bootstrap replicates and the dictionaries (principal
patterns, observations x K) are compared pairwise. The instability score is the mean
dissimilarity over the N(N-1)/2 pairs; the K with the lowest score is chosen.

Sources: Wu et al. 2016 PNAS 113:4290 (staNMF; random restarts, Amari-type error on the
Pearson cross-correlation, K = 15..30, 100 replicates); Yu-Group/staNMF ``instability()``
(Hungarian matching on cosine similarity, the standard-deviation bound); osNMF, Cahill et al.
2024 PNAS 121:e2319804121 (bootstrap of genes, ``np.random.seed(b)``, fixed
``random_state``, K = 8..30). See ``docs/stability.md``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment

from ._memory import check_memory
from ._progress import Progress, relay
from ._validation import as_float_matrix, check_int, check_int_sequence
from .batched import BatchResult, iter_fit_batch, nndsvda_batch, transposed
from .starts import random_start
from .store import STORE_FORMAT, StabilityStore, StoreError, fingerprint  # noqa: F401 (re-exported)

RESAMPLING = ("genes", "obs", "none")
SIMILARITIES = ("cosine", "pearson")
MATCHINGS = ("hungarian", "amari")


# ------------------------------------------------------------------ dissimilarities
def dictionary_similarity(A: np.ndarray, B: np.ndarray, kind: str = "cosine") -> np.ndarray:
    """K x K absolute similarity between the columns of two dictionaries (n_obs x K).

    ``"cosine"``: uncentred, what Yu-Group/staNMF and osNMF compute (``findcorrelation``);
    ``"pearson"``: centred, what the original MATLAB staNMF computes (``corr``).
    """
    if kind not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {SIMILARITIES}; got {kind!r}.")
    A = np.asarray(A, dtype=np.float64)
    B = np.asarray(B, dtype=np.float64)
    if kind == "pearson":
        A = A - A.mean(axis=0)
        B = B - B.mean(axis=0)
    na = np.linalg.norm(A, axis=0)
    nb = np.linalg.norm(B, axis=0)
    return np.abs((A / np.where(na > 0, na, 1)).T @ (B / np.where(nb > 0, nb, 1)))


def hungarian_distance(C: np.ndarray) -> float:
    """(1/K) sum_k (1 - C[r_k, c_k]) after the optimal one-to-one matching (Yu-Group staNMF)."""
    r, c = linear_sum_assignment(-C)
    return float(np.mean(1 - C[r, c]))


def amari_distance(C: np.ndarray) -> float:
    """Amari-type error: 1/2 [mean_j (1 - max_i C_ij) + mean_i (1 - max_j C_ij)] (Wu 2016,
    ``amariMaxError.m``).
    """
    return float(0.5 * (np.mean(1 - C.max(axis=0)) + np.mean(1 - C.max(axis=1))))


def instability(dictionaries: np.ndarray, *, matching: str = "hungarian",
                similarity: str = "cosine") -> tuple[float, float]:
    """Instability score and its standard-deviation bound for one K.

    Parameters
    ----------
    dictionaries : numpy.ndarray, (N, n_obs, K)
        The dictionaries of N >= 2 bootstrap replicates.
    matching : {"hungarian", "amari"}
    similarity : {"cosine", "pearson"}

    Returns
    -------
    (gamma, sd)
        gamma = mean of d over the N(N-1)/2 pairs (equal to the mean over ordered pairs,
        as d is symmetric); sd = sqrt(mean d^2 - gamma^2) * sqrt(2/N), the reference code's
        bound on the U-statistic's standard deviation.
    """
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {MATCHINGS}; got {matching!r}.")
    D = np.asarray(dictionaries, dtype=np.float64)
    N = D.shape[0]
    if N < 2:
        raise ValueError("The instability needs at least 2 replicates.")
    if similarity == "pearson":
        D = D - D.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(D, axis=1, keepdims=True)
    D = D / np.where(norms > 0, norms, 1)
    K = D.shape[2]
    flat = D.transpose(0, 2, 1).reshape(N * K, -1)  # (N K, n_obs): each replicate's patterns as rows
    dist = amari_distance if matching == "amari" else hungarian_distance
    d = np.empty(N * (N - 1) // 2)
    p = 0
    for a in range(N - 1):  # one product per replicate against the later ones: memory O(N K^2)
        C = np.abs(flat[a * K:(a + 1) * K] @ flat[(a + 1) * K:].T).reshape(K, N - a - 1, K)
        for j in range(N - a - 1):
            d[p] = dist(C[:, j, :])
            p += 1
    gamma = float(d.mean())
    sd = float(np.sqrt(max((d ** 2).mean() - gamma ** 2, 0.0)) * np.sqrt(2.0 / N))
    return gamma, sd


# ------------------------------------------------------------------ replicates
def replicate_counts(size: int, replicate: int, random_state: int = 0) -> np.ndarray:
    """Bootstrap counts of one replicate: how often each of ``size`` units is drawn.

    Replicate b draws with ``np.random.RandomState(random_state + b).choice(size, size)``,
    as osNMF draws with ``np.random.seed(b)``.
    """
    idx = np.random.RandomState(random_state + replicate).choice(size, size, replace=True)
    return np.bincount(idx, minlength=size).astype(np.float64)


def _weights(shape, resample, replicate, seed):
    n, m = shape
    rw, cw = np.ones(n), np.ones(m)
    if resample == "genes":
        cw = replicate_counts(m, replicate, seed)
    elif resample == "obs":
        rw = replicate_counts(n, replicate, seed)
    return rw, cw


def fit_replicates(X: np.ndarray, k: int, replicates: Sequence[int], *, resample: str = "genes",
                   random_state: int = 0, max_iter: int = 200, tol: float = 1e-4
                   ) -> Generator[Progress, None, BatchResult]:
    """Fit the given bootstrap replicates at one K together (see :mod:`.batched`).

    Replicate b draws its bootstrap sample with random_state + b; the NNDSVDa start uses
    ``random_state`` for every replicate (osNMF fixes scikit-learn's random_state, so all
    variation comes from the bootstrap); with ``resample="none"`` replicate b starts from
    scikit-learn's random init with random_state + b (staNMF's random restarts). The sweep
    always fits the same fixed batches, so a resumed or distributed sweep gives identical
    numbers.
    """
    seed = random_state
    X32 = np.ascontiguousarray(X, dtype=np.float32)
    XT32 = transposed(X32)
    RW, CW = (np.array(a) for a in zip(*(_weights(X.shape, resample, b, seed) for b in replicates)))
    if resample == "none":
        W0, H0 = (np.array(a) for a in zip(*(random_start(np.asarray(X), k, seed + b) for b in replicates)))
    else:  # every replicate's randomized SVD in the same wide float32 products
        W0, H0 = nndsvda_batch(X32, XT32, RW, CW, k, seed)
    return (yield from iter_fit_batch(X32, W0, H0, row_w=RW, col_w=CW, XT=XT32, max_iter=max_iter, tol=tol))


# ------------------------------------------------------------------ the sweep
@dataclass
class StabilityResult:
    """The outcome of a sweep.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per K: ``k, instability, sd, n_replicates``.
    best_k : int
        argmin of the instability.
    params : dict
        The sweep's parameters.
    edge_warning : str or None
        Set (and warned) when the lowest instability is at an end of the K range: the
        minimum may lie outside it.
    """

    table: pd.DataFrame
    best_k: int
    params: dict = field(default_factory=dict)
    edge_warning: str | None = None


def check_stability_input(X, k_range, n_replicates: int, resample: str, matching: str,
                          similarity: str, *, check_values: bool = True) -> tuple[np.ndarray, list[int]]:
    """Validate a sweep's input (cheap; raises before any fit).

    With ``check_values=False`` only the shape, K range, N and options are checked (for data
    that will be imputed first). All-zero observations or genes are allowed: they carry no
    pattern and get zero weights.

    Raises
    ------
    TypeError
        ``k_range`` not a sequence of integers (a string, floats), N not an integer.
    ValueError
        K outside [2, min(n_obs, n_genes)], fewer than 2 replicates, non-finite or negative
        values, all-zero data, unknown options.
    """
    X = as_float_matrix(X) if check_values else np.asarray(X)
    for name, value, options in (("resample", resample, RESAMPLING), ("matching", matching, MATCHINGS),
                                 ("similarity", similarity, SIMILARITIES)):
        if value not in options:
            raise ValueError(f"{name} must be one of {options}; got {value!r}.")
    ks = check_int_sequence(k_range, "k_range")
    k_max = min(X.shape)
    if ks[0] < 2 or ks[-1] > k_max:
        raise ValueError(f"Every K must lie between 2 and {k_max} (the number of "
                         f"{'genes' if X.shape[1] <= X.shape[0] else 'observations'}: the data have {X.shape[1]:,} "
                         f"genes and {X.shape[0]:,} observations; K = 1 has nothing to match); got K from "
                         f"{ks[0]} to {ks[-1]}.")
    if check_int(n_replicates, "n_replicates") < 2:
        raise ValueError(f"The instability compares replicates: n_replicates must be >= 2; got {n_replicates}.")
    if check_values and not X.any():
        raise ValueError("X is all zeros: there is no expression to factorize.")
    return X, ks


def sweep_memory(shape: tuple[int, int], ks: list[int], n_replicates: int, batch_size: int) -> int:
    """Estimated peak bytes of a local sweep: X in float32 twice (and its transpose), one K's
    dictionaries (N n_obs K float32, kept until scored), the pair similarities of one
    replicate against the others (N K^2 float64) and one batch's factors and products.
    """
    n, m = shape
    k = max(ks)
    b = min(batch_size, n_replicates)
    return int(2 * n * m * 4 + n_replicates * n * k * 4 + n_replicates * k * k * 8 + 10 * b * (n + m) * (k + 10) * 4)


def iter_stability(
    X,
    k_range: Sequence[int],
    n_replicates: int = 100,
    *,
    resample: str = "genes",
    matching: str = "hungarian",
    similarity: str = "cosine",
    random_state: int = 0,
    batch_size: int = 25,
    max_iter: int = 200,
    tol: float = 1e-4,
    store=None,
    backend: str = "local",
    scheduler=None,
) -> Generator[Progress, None, StabilityResult]:
    """The staNMF sweep as a generator: checks input at the call, then yields progress.

    Parameters
    ----------
    X : array-like, (n_obs, n_genes)
        Non-negative data; dictionaries are over observations (voxels, pixels, cells).
    k_range : sequence of int
        The K to scan, each in [2, min(n_obs, n_genes)].
    n_replicates : int
        N >= 2 bootstrap replicates per K (staNMF/osNMF: 100).
    resample : {"genes", "obs", "none"}
        What a replicate resamples with replacement: genes (images; the osNMF scheme,
        dictionaries stay aligned on the observations), observations, or nothing (random
        restarts, as Wu et al. 2016).
    matching : {"hungarian", "amari"}
    similarity : {"cosine", "pearson"}
    random_state : int
        Replicate b uses random_state + b for its bootstrap draw (and random init).
    batch_size : int
        Replicates fitted together (one wide matrix product per pass).
    max_iter, tol : int, float
        Passes and stopping tolerance of the batched solver.
    store : str or Path, optional
        A results folder (:class:`StabilityStore`); finished fits are kept there and a new
        run with the same data and parameters resumes (a wider K range reuses them).
    backend : {"local", "dask"}
        Fit batches in this process, or as dask.distributed tasks.
    scheduler : str or dask.distributed.Client, optional
        With ``backend="dask"``: a scheduler address or client; default a LocalCluster.

    Returns
    -------
    Generator yielding :class:`Progress` (``data`` carries each K's score as soon as it is
    known), returning :class:`StabilityResult`.

    Raises
    ------
    TypeError, ValueError
        As :func:`check_stability_input`; an unknown backend; ``batch_size < 1``.
    StoreError
        A store that cannot be used (see :class:`StabilityStore`).
    napari_spatial_nmf.core._memory.MemoryLimitError
        A sweep whose memory estimate (:func:`sweep_memory`) exceeds the limit.
    """
    if backend not in ("local", "dask"):
        raise ValueError(f"backend must be 'local' or 'dask'; got {backend!r}.")
    if backend == "dask":
        check_scheduler(scheduler)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    max_iter = check_int(max_iter, "max_iter", minimum=1)
    random_state = check_int(random_state, "random_state", minimum=0)
    X, ks = check_stability_input(X, k_range, n_replicates, resample, matching, similarity)
    n_replicates = int(n_replicates)
    check_memory(sweep_memory(X.shape, ks, n_replicates, batch_size),
                 f"a sweep of {n_replicates:,} replicates per K up to K = {max(ks)} on {X.shape[0]:,} x {X.shape[1]:,}",
                 "Use fewer replicates (staNMF uses 100), a smaller batch_size or fewer observations.")
    params = {"k_range": ks, "n_replicates": n_replicates, "resample": resample, "matching": matching,
              "similarity": similarity, "random_state": random_state, "batch_size": batch_size,
              "max_iter": max_iter, "tol": float(tol),
              "solver": "scikit-learn CD (HALS) iterations, replicates batched, float32 products"}
    fit_params = {k: params[k] for k in ("resample", "random_state", "max_iter", "tol", "batch_size",
                                         "n_replicates")}
    st = StabilityStore(store, fit_params, fingerprint(X)) if store is not None else None
    return _sweep(X, ks, n_replicates, params, st, backend, scheduler)


def check_scheduler(scheduler, timeout: float = 5.0) -> None:
    """Check, before any work, that dask.distributed is installed and a scheduler address answers.

    Raises
    ------
    ImportError
        dask.distributed is missing (the ``dask`` extra).
    ValueError
        The address does not parse, or nothing accepts a connection there within ``timeout`` s.
    """
    import socket

    try:
        import distributed  # noqa: F401
    except ImportError:
        raise ImportError("The dask backend needs dask.distributed: pip install 'napari-spatial-nmf[dask]', or use "
                          "backend='local'.") from None
    if scheduler is None or not isinstance(scheduler, str):
        return
    from urllib.parse import urlsplit

    address = scheduler if "://" in scheduler else f"tcp://{scheduler}"
    try:
        parts = urlsplit(address)
        host, port = parts.hostname, parts.port
    except ValueError:
        host = port = None
    if not host or not port:
        raise ValueError(f"The dask scheduler address {scheduler!r} is not host:port (e.g. tcp://127.0.0.1:8786).")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        raise ValueError(f"Cannot reach the dask scheduler at {scheduler} ({exc.strerror or exc}): start it "
                         "(`dask scheduler`), check the address, or give no scheduler for a local cluster.") from None


def _batches(n_replicates: int, batch_size: int) -> list[list[int]]:
    return [list(range(s, min(s + batch_size, n_replicates))) for s in range(0, n_replicates, batch_size)]


def _run_batch(X, k, reps, resample, random_state, max_iter, tol):
    """One (K, batch) task: plain function, so dask can ship it (drains the generator)."""
    from ._progress import drain

    res = drain(fit_replicates(X, k, reps, resample=resample, random_state=random_state, max_iter=max_iter,
                               tol=tol))
    return k, reps, res.W, res.objective, res.n_iter


def _sweep(X, ks, N, params, store, backend, scheduler):
    try:
        return (yield from _sweep_steps(X, ks, N, params, store, backend, scheduler))
    finally:
        if store is not None:
            store.close()


def _sweep_steps(X, ks, N, params, store, backend, scheduler):
    batches = _batches(N, params["batch_size"])
    total = len(ks) * N
    dicts: dict[int, dict[int, np.ndarray]] = {k: {} for k in ks}
    todo = []
    for k in ks:
        for reps in batches:
            loaded = {}
            if store is not None and all(store.has(k, b) for b in reps):
                loaded = {b: store.load(k, b, X.shape[0]) for b in reps}
            if loaded and all(v is not None for v in loaded.values()):
                dicts[k].update(loaded)
            else:
                todo.append((k, reps))
    done = total - sum(len(r) for _, r in todo)
    rows: dict[int, tuple[float, float]] = {}

    def finish(k, reps, W, obj, n_iter):
        nonlocal done
        for i, b in enumerate(reps):
            dicts[k][b] = W[i]
            if store is not None:
                store.save(k, b, W[i], obj[i], int(n_iter[i]))
        done += len(reps)

    def score(k):
        if k in rows or len(dicts[k]) < N:
            return None
        g, s = instability(np.stack([dicts[k][b] for b in range(N)]), matching=params["matching"],
                           similarity=params["similarity"])
        dicts[k] = {}  # scored: the dictionaries are no longer needed here (the store keeps them)
        rows[k] = (g, s)
        return Progress(done, total, f"K={k}: instability {g:.4f} ± {s:.4f}", {"k": k, "instability": g, "sd": s})

    for k in ks:  # K already complete in the store
        p = score(k)
        if p is not None:
            yield p
    yield Progress(done, total, f"{done}/{total} fits already in the store" if done else "starting")
    if backend == "local":
        for k, reps in todo:
            gen = fit_replicates(X, k, reps, resample=params["resample"], random_state=params["random_state"],
                                 max_iter=params["max_iter"], tol=params["tol"])
            res = yield from relay(gen, lambda p, k=k, reps=reps: Progress(
                done, total, f"K={k}, replicates {reps[0]}–{reps[-1]}: {p.message}"))
            finish(k, reps, res.W, res.objective, res.n_iter)
            p = score(k)
            yield p if p is not None else Progress(done, total, f"K={k}: {done}/{total} fits")
    else:
        yield from _dask_sweep(X, todo, params, scheduler, finish, score, lambda: (done, total))
    table = pd.DataFrame([{"k": k, "instability": rows[k][0], "sd": rows[k][1], "n_replicates": N} for k in ks])
    best = int(table.loc[table["instability"].idxmin(), "k"])
    edge = None
    if len(ks) > 1 and best in (ks[0], ks[-1]):
        side = "smaller" if best == ks[0] else "larger"
        edge = (f"The lowest instability is at K = {best}, the {'lower' if side == 'smaller' else 'upper'} end of "
                f"the range {ks[0]}–{ks[-1]}: the minimum may lie outside it. Extend the range to {side} K.")
        warnings.warn(edge, UserWarning, stacklevel=2)
    return StabilityResult(table, best, params, edge)


def _dask_sweep(X, todo, params, scheduler, finish, score, counts):
    from dask.distributed import Client, LocalCluster, as_completed

    own = None
    if isinstance(scheduler, Client):
        client = scheduler
    elif scheduler is not None:
        client = own = Client(scheduler, timeout="20s")
    else:
        cluster = LocalCluster(n_workers=1, threads_per_worker=os.cpu_count() or 1, processes=False,
                               dashboard_address=None)
        client = own = Client(cluster)
    try:
        Xf = client.scatter(X, broadcast=True)
        futures = [client.submit(_run_batch, Xf, k, reps, params["resample"], params["random_state"],
                                 params["max_iter"], params["tol"], pure=False) for k, reps in todo]
        try:
            for fut in as_completed(futures):
                k, reps, W, obj, n_iter = fut.result()
                finish(k, reps, W, obj, n_iter)
                done, total = counts()
                p = score(k)
                yield p if p is not None else Progress(done, total, f"K={k}: {done}/{total} fits (dask)")
        except GeneratorExit:
            client.cancel(futures)
            raise
    finally:
        close_own_client(own)


def close_own_client(own) -> None:
    """Close a dask client this package opened (and its local cluster); None: nothing to close."""
    if own is not None:
        cluster = getattr(own, "cluster", None)
        own.close()
        if cluster is not None:
            cluster.close()
