"""scverse-style tools: compute on an AnnData and write results under new keys.

Every function takes an AnnData (observations x genes, ``obsm["spatial"]``) and adds its
results under new keys, never overwriting the user's data (``docs/data-model.md``):

=================================  ==============================================
``obsm[f"X_{key}"]``                principal patterns / cell weights, (n_obs, K) float32
``varm[f"{key}_coefficients"]``     gene coefficients (NMF), (n_genes, K) float32
``varm[f"{key}_signatures"]``       gene signatures (NNMF), (n_genes, K) float32
``uns[key]``                        parameters, seed, versions, names, convergence
``uns[f"{key}_<read-out>"]``        read-outs with their parameters; tables as DataFrames
``layers["imputed"]``               :func:`impute_knn` output
=================================  ==============================================

Each long tool has a generator twin (``iter_*``) with the same signature: it checks the
input when called, yields :class:`~napari_spatial_nmf.core.Progress` and returns the
AnnData holding the results, so a GUI can show progress and cancel.
"""

from ._atlas import (
    coexpression_networks,
    imputation_holdout,
    iter_osnmf_suite,
    marker_genes,
    morans_i,
    network_edges,
    osnmf_suite,
    pca_baseline,
    reconstruction_accuracy,
    store_osnmf_suite,
)
from ._common import pattern_names, signature_names
from ._integrate import diagnose, factor_names, integrate, iter_integrate
from ._integrate_stability import integrate_stability, iter_integrate_stability
from ._nmf import check_nmf_input, impute_knn, iter_impute_knn, iter_nmf, nmf
from ._nnmf import (
    estimate_lengthscale,
    iter_estimate_lengthscale,
    iter_nnmf,
    nnmf,
    nnmf_top_genes,
    spatial_unit,
    spatially_variable_genes,
)
from ._reconstruct import iter_reconstruct_3d, reconstruct_3d
from ._regions import region_combinations, region_correlation
from ._scores import cluster_domains, factor_scores, integration_scores, iter_transfer_labels, transfer_labels
from ._stability import iter_stability, stability

__all__ = [
    "check_nmf_input",
    "cluster_domains",
    "coexpression_networks",
    "diagnose",
    "estimate_lengthscale",
    "factor_names",
    "factor_scores",
    "imputation_holdout",
    "impute_knn",
    "integrate",
    "integrate_stability",
    "integration_scores",
    "iter_estimate_lengthscale",
    "iter_impute_knn",
    "iter_integrate",
    "iter_integrate_stability",
    "iter_nmf",
    "iter_nnmf",
    "iter_osnmf_suite",
    "iter_reconstruct_3d",
    "iter_stability",
    "iter_transfer_labels",
    "marker_genes",
    "morans_i",
    "network_edges",
    "nmf",
    "nnmf",
    "nnmf_top_genes",
    "osnmf_suite",
    "pattern_names",
    "pca_baseline",
    "reconstruct_3d",
    "reconstruction_accuracy",
    "region_combinations",
    "region_correlation",
    "signature_names",
    "spatial_unit",
    "spatially_variable_genes",
    "stability",
    "store_osnmf_suite",
    "transfer_labels",
]
