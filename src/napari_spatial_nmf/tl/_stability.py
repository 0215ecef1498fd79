"""Choose K by stability (staNMF): bootstrap replicates, instability per K, final NMF."""

from __future__ import annotations

from collections.abc import Generator

import anndata as ad
import pandas as pd

from ..core._progress import Progress
from ..core.stability import iter_stability as _iter_stability
from ._common import blocking, store_result, target, tool
from ._nmf import check_nmf_input, iter_nmf


@tool
def iter_stability(
    adata: ad.AnnData,
    k_range,
    n_replicates: int = 100,
    *,
    layer: str | None = None,
    missing: str = "raise",
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
    fit_final: bool = True,
    key_added: str = "stability",
    nmf_key: str = "nmf",
    copy: bool = False,
) -> Generator[Progress, None, ad.AnnData]:
    """Choose K by staNMF: bootstrap replicates, instability per K, argmin, final NMF.

    For each K in ``k_range``, NMF is fitted to ``n_replicates`` bootstrap replicates (all
    replicates of a K share one pass through X; :mod:`napari_spatial_nmf.core.batched`)
    and the instability score is the mean dissimilarity of their dictionaries over all
    pairs (Hungarian matching or Amari-type error, on cosine or Pearson similarity; Wu et al.
    2016 PNAS; osNMF, Cahill et al. 2024 PNAS). The K with the lowest score is chosen and,
    with ``fit_final=True``, NMF is fitted on the full data at that K and stored as
    :func:`nmf` stores it.

    Parameters
    ----------
    adata : anndata.AnnData
        Observations x genes; the dictionaries are over observations.
    k_range : sequence of int
        K values (e.g. ``range(15, 31)``), each in [2, min(n_obs, n_genes)].
    n_replicates : int
        N >= 2 replicates per K.
    layer : str, optional
        Use ``adata.layers[layer]`` (e.g. ``"imputed"``) instead of ``X``.
    missing : {"raise", "zero"}
        NaN raise (impute first with :func:`impute_knn`), or count as zero.
    resample : {"genes", "obs", "none"}
        "genes" (osNMF: resample genes / images), "obs", or "none" (random restarts, Wu 2016).
    matching : {"hungarian", "amari"}
        How two dictionaries' patterns are matched.
    similarity : {"cosine", "pearson"}
        Pattern similarity (cosine: Yu-Group staNMF and osNMF; Pearson: the MATLAB code).
    random_state : int
        Replicate b uses random_state + b.
    batch_size : int
        Replicates fitted together (one wide matrix product per pass).
    max_iter, tol : int, float
        Solver settings (scikit-learn's 200 and 1e-4).
    store : str or Path, optional
        Results folder: every finished fit is kept with a checksum; re-running resumes
        with identical numbers, and a wider ``k_range`` reuses the finished K.
    backend : {"local", "dask"}
        Fit batches here, or as dask.distributed tasks.
    scheduler : str or dask.distributed.Client, optional
        dask scheduler address or client (default: a LocalCluster).
    fit_final : bool
        Fit and store the final model at the chosen K.
    key_added : str
        ``uns[key_added]``: ``table`` (k, instability, sd, n_replicates), ``best_k``,
        ``edge_warning``, parameters and versions.
    nmf_key : str
        Where the final model goes (as :func:`nmf`'s ``key_added``).
    copy : bool
        Work on and return a copy.

    Returns
    -------
    anndata.AnnData or None
        ``stability``: the copy if ``copy=True``, else None. ``iter_stability``: a generator
        of :class:`~napari_spatial_nmf.core.Progress` (``data`` carries each K's score as
        soon as it is known) returning the AnnData.

    Raises
    ------
    TypeError
        A non-integer K or N (2.7 would silently be 2), a string ``k_range``.
    ValueError
        K outside [2, min(n_obs, n_genes)], fewer than 2 replicates, NaN / negative values,
        a store holding another sweep or a damaged record it cannot recompute, a request
        whose memory estimate exceeds what the machine has.
    """
    X = check_nmf_input(adata, 1, layer=layer, missing=missing)
    sweep = _iter_stability(X, k_range, n_replicates, resample=resample, matching=matching, similarity=similarity,
                            random_state=random_state, batch_size=batch_size, max_iter=max_iter, tol=tol,
                            store=store, backend=backend, scheduler=scheduler)
    yield Progress(0, 1, "staNMF sweep")
    res = yield from sweep
    out = target(adata, copy)
    final = None
    if fit_final:
        yield Progress(0, 1, f"final NMF at K = {res.best_k}")
        # fitted on a bare AnnData of the checked matrix, so nothing of ``out`` is touched before storing
        bare = ad.AnnData(X, obs=pd.DataFrame(index=adata.obs_names), var=pd.DataFrame(index=adata.var_names))
        final = yield from iter_nmf(bare, res.best_k, random_state=random_state, max_iter=max_iter, tol=tol,
                                    key_added=nmf_key)
    params = {**res.params, "layer": layer, "missing": missing,
              "store": None if store is None else str(store), "backend": backend}
    record = {"table": res.table, "best_k": res.best_k, "edge_warning": res.edge_warning}
    if final is None:
        return store_result(out, key_added, "stability", params, record=record)
    return store_result(out, key_added, "stability", params, record=record,
                 obsm={f"X_{nmf_key}": final.obsm[f"X_{nmf_key}"]},
                 varm={f"{nmf_key}_coefficients": final.varm[f"{nmf_key}_coefficients"]},
                 uns={nmf_key: {**final.uns[nmf_key], "selected_by": key_added,
                                "params": {k: v for k, v in {**final.uns[nmf_key]["params"], "layer": layer,
                                                             "missing": missing}.items() if v is not None}}})


stability = blocking(iter_stability, "stability")
