"""Choose K for an integration by stability, as staNMF chooses it for NMF.

For each K of a range, the integration is fitted from ``n_restarts`` seeds; the gene programs
of the restarts are matched pairwise (Hungarian or Amari-type, on cosine similarity; Wu et al.
2016, :func:`napari_spatial_nmf.core.stability.instability`) and the instability is their
mean dissimilarity. Beside it, per K, the integration's label-free diagnostics of the
consensus: how well the sections mix, and how many factors a single section uses alone. The
chosen K is the most stable one among those without section-specific factors (the programs
are then both reproducible and shared); the result is the consensus of the restarts at that
K (no refit). Every finished fit is kept in the staNMF results store
(:class:`napari_spatial_nmf.core.store.StabilityStore`: resumable, one writer at a time,
checksummed), and the fits can run on dask.distributed.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Generator

import anndata as ad
import numpy as np
import pandas as pd

from ..core._progress import Progress, drain
from ..core._validation import check_int, check_int_sequence
from ..core.stability import MATCHINGS, instability
from ._common import tool
from ._integrate import METHODS, _restart_progress, factor_names, finish, fit_one, prepare, warn_unconverged


def _fingerprint(sec) -> str:
    h = hashlib.sha1(str((sec.names, sec.genes, sec.sizes)).encode())
    for c in sec.counts:
        h.update(np.ascontiguousarray(c.data).tobytes())
        h.update(np.ascontiguousarray(c.indices).tobytes())
    return h.hexdigest()


def _fit_task(sec, graph, method, K, seed, opts):
    """One restart as a plain function (a dask task)."""
    props, programs, gamma, record, latent = drain(fit_one(sec, graph, method, K, seed, opts))
    return props, programs, gamma, record, latent


@tool
def iter_integrate_stability(
    sections,
    k_range,
    n_restarts: int = 5,
    *,
    method: str = "joint_nnmf",
    matching: str = "hungarian",
    store=None,
    backend: str = "local",
    scheduler=None,
    random_state: int = 0,
    key_added: str = "integration",
    **kwargs,
) -> Generator[Progress, None, ad.AnnData]:
    """Integrate sections at the K chosen by stability (see the module docstring).

    Parameters
    ----------
    sections : list of anndata.AnnData, or anndata.AnnData
        As :func:`napari_spatial_nmf.tl.integrate`.
    k_range : sequence of int
        The K to compare (e.g. ``range(6, 17)``), each at most the genes the sections share.
    n_restarts : int
        Fits per K from seeds ``random_state`` ... (at least 2: the instability compares them).
    method : {"joint_nnmf", "inspire"}
        As :func:`napari_spatial_nmf.tl.integrate` (INSPIRE trains ``n_restarts`` models per K).
    matching : {"hungarian", "amari"}
        How two restarts' programs are matched (staNMF's two scores).
    store : str or Path, optional
        A results folder that keeps every finished fit; running the same call again resumes.
    backend : {"local", "dask"}
        Fit in this process, or as dask.distributed tasks (``scheduler``: an address or a
        client; default a local cluster).
    scheduler : str or dask.distributed.Client, optional
        See ``backend``.
    random_state : int
        The first seed.
    key_added : str
        As :func:`napari_spatial_nmf.tl.integrate`; the sweep goes to
        ``uns[f"{key_added}_stability"]``: a table with one row per K (``k, instability, sd,
        mixing, n_section_specific, chosen``) and ``best_k``.
    **kwargs
        Every other parameter of :func:`napari_spatial_nmf.tl.integrate` (``counts``,
        ``genes``, ``n_hvgs``, ``max_iter``, ...).

    Yields
    ------
    Progress
        Per restart; ``data`` carries each K's row as soon as it is known (a live curve).

    Returns
    -------
    anndata.AnnData
        The integration at the chosen K (the consensus of its restarts), as
        :func:`napari_spatial_nmf.tl.integrate` returns it, with the sweep.

    Raises
    ------
    TypeError, ValueError
        An empty or non-integer K range, K above the shared genes, fewer than 2 restarts, an
        unknown matching, backend or method; the checks of :func:`~napari_spatial_nmf.tl.integrate`.
    napari_spatial_nmf.core.store.StoreError
        A store of other data or parameters, or one another sweep is writing.
    """
    from ..core.stability import check_scheduler
    from ..core.store import StabilityStore

    if isinstance(k_range, range) and len(k_range) == 0:
        raise ValueError(f"The K range {k_range} is empty: give the smallest K first (e.g. range(6, 13)).")
    ks = check_int_sequence(k_range, "k_range", minimum=1)
    if isinstance(n_restarts, (int, np.integer)) and not isinstance(n_restarts, bool) and n_restarts < 2:
        raise ValueError(f"n_restarts must be at least 2 (the instability compares restarts' programs; 5 is typical); "
                         f"got {n_restarts}. For one fit at a known K use tl.integrate.")
    n_restarts = check_int(n_restarts, "n_restarts", minimum=2)
    if matching not in MATCHINGS:
        raise ValueError(f"matching must be one of {MATCHINGS}; got {matching!r}.")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}; got {method!r}.")
    if backend not in ("local", "dask"):
        raise ValueError(f"backend must be 'local' or 'dask'; got {backend!r}.")
    if backend == "dask":
        check_scheduler(scheduler)
    if kwargs.pop("n_restarts", None) is not None:
        raise TypeError("n_restarts is this function's own parameter.")
    from inspect import signature

    from ._integrate import iter_integrate

    allowed = set(signature(iter_integrate).parameters) - {"sections", "n_factors", "method", "random_state",
                                                          "key_added", "n_restarts"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        raise TypeError(f"Unknown parameters {unknown}; integrate takes {sorted(allowed)}.")
    defaults = {k: p.default for k, p in signature(iter_integrate).parameters.items() if k in allowed}
    args = {**defaults, **kwargs}
    opts_in = {k: args[k] for k in ("n_steps", "variant", "rad_cutoff", "rad_coef", "batch_size", "coef_recon",
                                    "coef_geom", "lengthscale", "max_iter", "tol", "fit_gamma")}
    sec, graph, params, opts = prepare(sections, ks, method=method,
                                       section_key=args["section_key"], section_names=args["section_names"],
                                       layer=args["layer"], spatial_key=args["spatial_key"], counts=args["counts"],
                                       genes=args["genes"], n_hvgs=args["n_hvgs"], min_genes=args["min_genes"],
                                       min_cells=args["min_cells"], random_state=random_state, key_added=key_added,
                                       **opts_in)
    store_params = {k: v for k, v in params.items() if k not in ("n_factors", "spatial_unit")}
    store_params |= {"kind": "integration", "n_restarts": n_restarts}
    st = StabilityStore(store, store_params, _fingerprint(sec)) if store is not None else None
    return _sweep(sec, graph, params, opts, ks, n_restarts, matching, st, backend, scheduler, key_added)


def _pack(props, programs) -> np.ndarray:
    """A restart as one (G + n) x K matrix for the store: its programs (G x K) over its proportions."""
    return np.vstack([np.asarray(programs, dtype=np.float32).T, np.asarray(props, dtype=np.float32)])


def _sweep(sec, graph, params, opts, ks, R, matching, st, backend, scheduler, key_added):
    from ..core import diagnostics as dg
    from ..core.consensus import consensus
    from ..core.domains import standardise

    G, n = len(sec.genes), sum(sec.sizes)
    sections = np.repeat(sec.names, sec.sizes)
    sizes = dict(zip(sec.names, sec.sizes))
    method, seed0 = params["method"], params["random_state"]
    opts = dict(opts, warn=False)  # one convergence warning for the whole sweep (below)
    per_fit = opts["n_steps"] if method == "inspire" else opts["max_iter"]
    total = len(ks) * R * per_fit
    results: dict[int, list] = {k: [None] * R for k in ks}
    latents: dict[int, np.ndarray] = {}
    rows = []
    try:
        todo = []
        for k in ks:
            for r in range(R):
                loaded = st.load(k, r, G + n) if st is not None and st.has(k, r) else None
                gamma = st.load_extra(k, r, "gamma") if loaded is not None else None
                if loaded is not None and gamma is not None and (method != "inspire" or r > 0):
                    capped = st.load_extra(k, r, "max_iter_reached")
                    rec = {"stop_reason": "max_iter"} if capped is not None and bool(capped) else {}
                    results[k][r] = (loaded[G:], loaded[:G].T, gamma, rec, None)
                else:
                    todo.append((k, r))
        state = {"done": (len(ks) * R - len(todo)) * per_fit}
        done = state["done"]
        yield Progress(done, total, f"{len(ks)} K x {R} restarts" + (f", {len(ks) * R - len(todo)} in the store"
                                                                     if done else ""))

        def score(k):
            fits = results[k]
            # (R, G, K): the dictionaries staNMF compares, in the store's float32 (a resumed sweep scores the same)
            programs = np.stack([np.asarray(f[1], dtype=np.float32).T for f in fits])
            g, s = instability(programs, matching=matching)
            cons = consensus([(f[0], f[1], f[2]) for f in fits])
            usage = dg.factor_usage(cons.proportions, sections)
            spec = dg.section_specific(usage, sizes)
            mixing = dg.mixing_score(standardise(cons.proportions, sections), sections)
            row = {"k": k, "instability": g, "sd": s, "mixing": mixing, "n_section_specific": len(spec)}
            rows.append(row)
            return Progress(state["done"], total, f"K={k}: instability {g:.4f} ± {s:.4f}, mixing {mixing:.2f}, "
                                         f"{len(spec)} section-specific factor(s)", dict(row))

        def record(k, r, fit):
            results[k][r] = fit
            state["done"] += per_fit
            if fit[4] is not None and r == 0:
                latents[k] = fit[4]
            if st is not None:
                st.save_extra(k, r, "gamma", np.asarray(fit[2], dtype=np.float32))
                st.save_extra(k, r, "max_iter_reached", np.array(fit[3].get("stop_reason") == "max_iter"))
                st.save(k, r, _pack(fit[0], fit[1]), float(fit[3].get("gkl", np.nan)), int(fit[3].get("n_iter", 0)))

        if backend == "local":
            for k, r in todo:
                fit = yield from _relay_fit(sec, graph, method, k, seed0 + r, opts, state["done"], total, k, r, R)
                record(k, r, fit)
                if all(f is not None for f in results[k]):
                    yield score(k)
        else:
            yield from _dask(sec, graph, method, todo, seed0, opts, scheduler, record,
                             lambda k: score(k) if all(f is not None for f in results[k]) else None,
                             lambda: (state["done"], total))
        for k in ks:
            if k not in {row["k"] for row in rows}:
                yield score(k)
    finally:
        if st is not None:
            st.close()
    if method == "joint_nnmf":
        warn_unconverged({k: [f[3] for f in results[k]] for k in ks}, opts["max_iter"], opts["tol"], stacklevel=2)
    table = pd.DataFrame(rows).sort_values("k").reset_index(drop=True)
    shared = table[table["n_section_specific"] == 0]
    pick = shared if len(shared) else table
    best = int(pick.loc[pick["instability"].idxmin(), "k"])
    table["chosen"] = table["k"] == best
    note = None
    if not len(shared):
        note = (f"Every K of {ks[0]}-{ks[-1]} has factors used by one section only; K = {best} is the most stable "
                "of them. The sections may not share these programs (another tissue, a platform effect).")
        warnings.warn(note, UserWarning, stacklevel=2)
    elif len(ks) > 1 and best in (ks[0], ks[-1]):
        note = (f"The chosen K = {best} is at an end of the range {ks[0]}-{ks[-1]}: the best K may lie outside it.")
        warnings.warn(note, UserWarning, stacklevel=2)
    fits = results[best]
    if method == "inspire" and best in latents:  # the model at the chosen K needs its latent space
        latent = latents[best]
    elif method == "inspire":  # the first restart of the chosen K came from the store: fit it again
        fits[0] = drain(fit_one(sec, graph, method, best, seed0, opts))
        latent = fits[0][4]
    else:
        latent = None
    params = dict(params, n_factors=best, n_restarts=R, k_range=ks, matching=matching)
    out = finish(sec, graph, [f[:3] for f in fits], [f[3] for f in fits], latent, params, key_added)
    out.uns[f"{key_added}_stability"] = {"table": table, "best_k": best, "note": note, "matching": matching,
                                         "n_restarts": R, "factor_names": factor_names(best)}
    return out


def _relay_fit(sec, graph, method, k, seed, opts, done, total, kk, r, R):
    gen = fit_one(sec, graph, method, k, seed, opts)
    while True:
        try:
            p = next(gen)
        except StopIteration as stop:
            return stop.value
        yield _restart_progress(Progress(p.step, p.total, f"K={kk}, {p.message}"), done, total, r, R)


def _dask(sec, graph, method, todo, seed0, opts, scheduler, record, score, counts):
    from dask.distributed import Client, LocalCluster, as_completed

    from ..core.stability import close_own_client

    own = None
    if isinstance(scheduler, Client):
        client = scheduler
    elif scheduler is not None:
        client = own = Client(scheduler, timeout="20s")
    else:
        client = own = Client(LocalCluster(n_workers=1, processes=False, dashboard_address=None))
    try:
        shipped = client.scatter(sec, broadcast=True)
        futures = {client.submit(_fit_task, shipped, graph, method, k, seed0 + r, opts, pure=False): (k, r)
                   for k, r in todo}
        try:
            for fut in as_completed(list(futures)):
                k, r = futures[fut]
                record(k, r, fut.result())
                p = score(k)
                done, total = counts()
                yield p if p is not None else Progress(done, total, f"K={k}, restart {r + 1} (dask)")
        except GeneratorExit:
            client.cancel(list(futures))
            raise
    finally:
        close_own_client(own)


def integrate_stability(sections, k_range, n_restarts: int = 5, **kwargs) -> ad.AnnData:
    """Blocking form of :func:`iter_integrate_stability` (same parameters, same result)."""
    return drain(iter_integrate_stability(sections, k_range, n_restarts, **kwargs))
