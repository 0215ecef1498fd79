"""scverse-style tools: compute on an AnnData and write results under new keys.

Every function takes an AnnData (observations x genes, ``obsm["spatial"]`` in µm) and
adds results under new keys, never overwriting the user's data:

============================  ==============================================
``obsm[f"X_{key}"]``           principal patterns, (n_obs, K) float32
``varm[f"{key}_coefficients"]`` gene coefficients, (n_genes, K) float32
``uns[key]``                   parameters, seed, versions, errors, pattern names
``layers["imputed"]``          :func:`impute_knn` output
============================  ==============================================

Each long computation has a generator twin (``iter_*``) that yields
:class:`~napari_spatial_nmf.core.Progress` and returns the AnnData holding the results.
"""

from __future__ import annotations

from collections.abc import Generator

import anndata as ad
import numpy as np
import pandas as pd

from .core import grid as _grid
from .core._progress import Progress, drain
from .core._validation import as_float_matrix, check_n_components
from .core.impute import impute_knn as _impute_knn
from .core.nmf import iter_fit_nmf
from .core.ontology import Ontology
from .core.provenance import provenance
from .core.regions import region_correlation as _region_correlation
from .core.stability import iter_stability as _iter_stability

MISSING_MODES = ("raise", "zero")


def _matrix(adata: ad.AnnData, layer: str | None) -> np.ndarray:
    if not isinstance(adata, ad.AnnData):
        raise TypeError(f"Expected an AnnData; got {type(adata).__name__}.")
    if layer is None:
        X = adata.X
    elif layer in adata.layers:
        X = adata.layers[layer]
    else:
        raise KeyError(f"No layer {layer!r} in the AnnData; it has {list(adata.layers)}.")
    if X is None:
        raise ValueError("The AnnData has no X matrix.")
    if hasattr(X, "toarray"):
        X = X.toarray()
    return np.asarray(X)


def pattern_names(k: int) -> list[str]:
    """Names of the K patterns of a result: ``PP1`` ... ``PPK`` (1-based, as in the papers)."""
    return [f"PP{i + 1}" for i in range(k)]


def check_nmf_input(adata: ad.AnnData, n_components: int, *, layer: str | None = None,
                    missing: str = "raise") -> np.ndarray:
    """Check the input of :func:`nmf` and return the matrix it will factorize.

    Raises
    ------
    ValueError, TypeError, KeyError
        As :func:`nmf`; cheap, so a GUI can call it before starting a worker.
    """
    if missing not in MISSING_MODES:
        raise ValueError(f"missing must be one of {MISSING_MODES}; got {missing!r}.")
    X = _matrix(adata, layer)
    if missing == "zero":
        X = np.nan_to_num(X, nan=0.0)
    X = as_float_matrix(X)
    check_n_components(n_components, *X.shape)
    return X


def iter_nmf(
    adata: ad.AnnData,
    n_components: int,
    *,
    layer: str | None = None,
    missing: str = "raise",
    init: str = "nndsvda",
    max_iter: int = 200,
    tol: float = 1e-4,
    random_state: int | None = 0,
    key_added: str = "nmf",
    copy: bool = False,
) -> Generator[Progress, None, ad.AnnData]:
    """Generator twin of :func:`nmf`: checks input at once, yields per iteration.

    Returns (as the generator's value) the AnnData holding the results: ``adata`` itself,
    or a copy when ``copy=True``.
    """
    X = check_nmf_input(adata, n_components, layer=layer, missing=missing)
    gen = iter_fit_nmf(X, n_components, init=init, max_iter=max_iter, tol=tol,
                       random_state=random_state)
    params = {"n_components": int(n_components), "layer": layer, "missing": missing, "init": init,
              "max_iter": int(max_iter), "tol": float(tol), "random_state": random_state,
              "solver": "cd (HALS), scikit-learn order", "beta_loss": "frobenius",
              "n_obs": adata.n_obs, "n_genes": adata.n_vars}

    def run():
        res = yield from gen
        out = adata.copy() if copy else adata
        out.obsm[f"X_{key_added}"] = res.patterns.astype(np.float32)
        out.varm[f"{key_added}_coefficients"] = res.coefficients.T.astype(np.float32)
        rec = provenance("nmf", params)
        rec.update({
            "pattern_names": pattern_names(res.patterns.shape[1]),
            "n_iter": res.n_iter,
            "converged": res.converged,
            "reconstruction_err": res.reconstruction_err,
            "relative_error": res.relative_error,
        })
        out.uns[key_added] = rec
        return out

    return run()


def nmf(adata: ad.AnnData, n_components: int, *, copy: bool = False, **kwargs) -> ad.AnnData | None:
    """Frobenius NMF of ``adata.X`` into principal patterns and gene coefficients.

    X (n_obs x n_genes) ~= W H, W >= 0 the principal patterns (one value per observation and
    pattern: a voxel's pattern intensity or a cell's weight), H >= 0 the gene coefficients.
    Each pattern is scaled to a maximum of 1 and its coefficients carry the scale. Solver:
    coordinate descent in scikit-learn's order (see :mod:`napari_spatial_nmf.core.nmf`);
    osNMF and staNMF use scikit-learn's NMF with these defaults.

    Parameters
    ----------
    adata : anndata.AnnData
        Observations (voxels or cells) x genes.
    n_components : int
        K, between 1 and min(n_obs, n_genes).
    layer : str, optional
        Use ``adata.layers[layer]`` instead of ``X`` (e.g. ``"imputed"``).
    missing : {"raise", "zero"}
        What to do with NaN (missing voxels): "raise" (default) asks you to impute first
        (:func:`impute_knn`); "zero" counts them as no expression.
    init, max_iter, tol : see :func:`napari_spatial_nmf.core.iter_fit_nmf`
    random_state : int or None
        Seed; a fixed seed gives identical results.
    key_added : str
        Results go to ``obsm[f"X_{key_added}"]``, ``varm[f"{key_added}_coefficients"]``,
        ``uns[key_added]``.
    copy : bool
        Work on and return a copy instead of adding keys to ``adata``.

    Returns
    -------
    anndata.AnnData or None
        The copy if ``copy=True``, else None (keys added to ``adata``).

    Raises
    ------
    ValueError
        NaN (with ``missing="raise"``), negative or infinite values, K out of range.
    """
    out = drain(iter_nmf(adata, n_components, copy=copy, **kwargs))
    return out if copy else None


def impute_knn(
    adata: ad.AnnData,
    *,
    n_neighbors: int = 6,
    layer: str | None = None,
    key_added: str = "imputed",
    copy: bool = False,
) -> ad.AnnData | None:
    """Fill missing values (NaN) from the k nearest measured observations, per gene.

    The osNMF scheme (distance-weighted k-NN regression on voxel coordinates, k=6; see
    :func:`napari_spatial_nmf.core.impute_knn`). The result goes to
    ``layers[key_added]``; ``X`` is left as it was.

    Raises
    ------
    ValueError
        No ``obsm["spatial"]``; a gene with fewer than ``n_neighbors`` measured values.
    """
    if "spatial" not in adata.obsm:
        raise ValueError("impute_knn needs coordinates in adata.obsm['spatial'].")
    X = _matrix(adata, layer).astype(np.float32)
    filled = _impute_knn(X, np.asarray(adata.obsm["spatial"]), n_neighbors=n_neighbors)
    out = adata.copy() if copy else adata
    out.layers[key_added] = filled
    out.uns[key_added] = provenance("impute_knn", {"n_neighbors": n_neighbors, "layer": layer,
                                                   "n_imputed": int(np.isnan(X).sum())})
    return out if copy else None


def region_correlation(
    adata: ad.AnnData,
    annotation: np.ndarray,
    ontology: Ontology,
    *,
    key: str = "nmf",
    genes: list[str] | None = None,
    layer: str | None = None,
    min_voxels: int = 1,
) -> pd.DataFrame:
    """Correlate principal patterns (or genes) of a volume AnnData with atlas structures.

    Parameters
    ----------
    adata : anndata.AnnData
        A volume AnnData (``uns["grid"]``) on the annotation's grid.
    annotation : numpy.ndarray of int, shape grid_shape
        Structure ids per voxel.
    ontology : Ontology
    key : str
        Which NMF result to use (``obsm[f"X_{key}"]``); ignored when ``genes`` is given.
    genes : list of str, optional
        Correlate these genes' volumes instead of patterns (missing voxels excluded).
    layer : str, optional
        With ``genes``: take values from this layer instead of ``X``.
    min_voxels : int
        Leave out structures with fewer valid voxels.

    Returns
    -------
    pandas.DataFrame
        As :func:`napari_spatial_nmf.core.region_correlation`. With patterns, it is also
        stored in ``uns[key]["region_correlation"]``.
    """
    if genes is not None:
        missing = [g for g in genes if g not in adata.var_names]
        if missing:
            raise KeyError(f"Genes not in the AnnData: {missing}.")
        values = _matrix(adata, layer)[:, adata.var_names.get_indexer(genes)]
        names = list(genes)
    else:
        if f"X_{key}" not in adata.obsm:
            raise KeyError(f"No obsm['X_{key}']: run tl.nmf(adata, ..., key_added={key!r}) first.")
        values = np.asarray(adata.obsm[f"X_{key}"])
        names = adata.uns.get(key, {}).get("pattern_names", pattern_names(values.shape[1]))
    grid = _grid.grid_of(adata)
    if grid.shape != tuple(np.shape(annotation)):
        raise ValueError(
            f"The AnnData's grid has shape {grid.shape} but the annotation has shape "
            f"{np.shape(annotation)}: they must be on the same grid."
        )
    df = _region_correlation(_grid.to_volume(adata, values), annotation, ontology,
                             names=list(names), min_voxels=min_voxels)
    if genes is None:
        adata.uns[key]["region_correlation"] = df
    return df


def iter_stability(
    adata: ad.AnnData,
    k_range,
    n_replicates: int = 100,
    *,
    layer: str | None = None,
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
    """Generator twin of :func:`stability` (input checked at the call)."""
    X = check_nmf_input(adata, 2, layer=layer)
    sweep = _iter_stability(X, k_range, n_replicates, resample=resample, matching=matching,
                            similarity=similarity, seed=random_state, batch_size=batch_size,
                            max_iter=max_iter, tol=tol, store=store, backend=backend, scheduler=scheduler)

    def run():
        res = yield from sweep
        out = adata.copy() if copy else adata
        rec = provenance("stability", {**res.params, "layer": layer,
                                       "store": str(store) if store is not None else None, "backend": backend})
        rec.update({"table": res.table, "best_k": res.best_k})
        out.uns[key_added] = rec
        if fit_final:
            yield Progress(0, 1, f"final NMF at K = {res.best_k}")
            yield from iter_nmf(out, res.best_k, layer=layer, random_state=random_state, key_added=nmf_key)
            out.uns[nmf_key]["selected_by"] = key_added
        return out

    return run()


def stability(adata: ad.AnnData, k_range, n_replicates: int = 100, *, copy: bool = False,
              **kwargs) -> ad.AnnData | None:
    """Choose K by staNMF: bootstrap replicates, instability per K, argmin, final NMF.

    For each K in ``k_range``, NMF is fitted to ``n_replicates`` bootstrap replicates (all
    replicates of a K share one pass through X; see :mod:`napari_spatial_nmf.core.batched`)
    and the instability score is the mean dissimilarity of their dictionaries over all
    pairs (Hungarian matching or Amari-type error, on cosine or Pearson similarity; Wu et al.
    2016 PNAS; osNMF, Cahill et al. 2024 PNAS). The K with the lowest score is chosen and,
    with ``fit_final=True``, NMF is fitted on the full data at that K and stored as
    :func:`nmf` stores it.

    Parameters
    ----------
    adata : anndata.AnnData
        Observations x genes; the dictionaries are over observations.
    k_range : iterable of int
        K values, each in [2, min(n_obs, n_genes)].
    n_replicates : int
        N >= 2 replicates per K.
    layer : str, optional
    resample : {"genes", "obs", "none"}
        "genes" (osNMF: resample genes / images), "obs", or "none" (random restarts, Wu 2016).
    matching : {"hungarian", "amari"}
    similarity : {"cosine", "pearson"}
    random_state : int
        Replicate b uses random_state + b.
    batch_size, max_iter, tol : solver settings (see :func:`napari_spatial_nmf.core.stability.iter_stability`)
    store : str or Path, optional
        Results folder: every finished fit is kept; re-running resumes with identical numbers.
    backend : {"local", "dask"}
    scheduler : str or dask.distributed.Client, optional
        dask scheduler address or client (default: a LocalCluster).
    fit_final : bool
        Fit and store the final model at the chosen K.
    key_added : str
        The table goes to ``uns[key_added]["table"]`` (k, instability, sd, n_replicates) with
        ``best_k``, parameters and versions.
    nmf_key : str
        Where the final model goes (as :func:`nmf`'s ``key_added``).
    copy : bool

    Returns
    -------
    anndata.AnnData or None

    Raises
    ------
    ValueError
        K outside [2, min(n_obs, n_genes)], fewer than 2 replicates, NaN / negative values,
        all-zero rows or columns, a store holding another sweep.
    """
    out = drain(iter_stability(adata, k_range, n_replicates, copy=copy, **kwargs))
    return out if copy else None
