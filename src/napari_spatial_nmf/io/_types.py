"""The objects the readers return: a gene stack on a grid and an atlas."""

from __future__ import annotations

from dataclasses import dataclass, field

import anndata as ad
import numpy as np

from ..core.grid import volumes_to_anndata
from ..core.ontology import Ontology


@dataclass
class Stack:
    """A stack of gene volumes (or images) on one grid.

    Attributes
    ----------
    data : numpy.ndarray, float32, shape (n_genes, *grid_shape)
        NaN marks missing values (e.g. Allen's -1 code).
    genes : list of str
        One name per volume.
    voxel_size : tuple of float
        µm per voxel along each grid axis.
    origin : tuple of float
        µm position of voxel 0.
    axes : tuple of str
        Grid axis names, e.g. ("AP", "DV", "ML").
    meta : dict
        Source details (paths, Allen SectionDataSet ids, missing code).
    """

    data: np.ndarray
    genes: list[str]
    voxel_size: tuple[float, ...]
    origin: tuple[float, ...] = ()
    axes: tuple[str, ...] = ()
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        ndim = self.data.ndim - 1
        self.origin = tuple(self.origin) or (0.0,) * ndim
        self.axes = tuple(self.axes) or ("z", "y", "x")[-ndim:]
        self.voxel_size = tuple(float(v) for v in self.voxel_size)
        if len(self.voxel_size) != ndim or len(self.origin) != ndim or len(self.axes) != ndim:
            raise ValueError(f"The stack has a {ndim}-D grid but voxel_size {self.voxel_size}, origin {self.origin} "
                             f"and axes {self.axes}: give one value per grid axis.")
        if len(self.genes) != self.data.shape[0]:
            raise ValueError(f"{len(self.genes)} gene names for {self.data.shape[0]} volumes.")

    def to_anndata(self, mask: np.ndarray | None = None) -> ad.AnnData:
        """The stack as the package's AnnData (in-mask voxels x genes); see
        :func:`napari_spatial_nmf.core.volumes_to_anndata`. Coordinates in µm
        (``uns["spatial_unit"]``).
        """
        adata = volumes_to_anndata(self.data, self.genes, voxel_size=self.voxel_size,
                                   origin=self.origin, axes=self.axes, mask=mask,
                                   unit=str(self.meta.get("unit", "µm")))
        adata.uns["source"] = {k: v for k, v in self.meta.items() if isinstance(v, (str, int, float))}
        return adata

    def concat(self, other: Stack) -> Stack:
        """A new stack with ``other``'s genes after this one's (same grid required).

        Raises
        ------
        ValueError
            Grids of different shapes or voxel sizes.
        """
        if other.data.shape[1:] != self.data.shape[1:] or other.voxel_size != self.voxel_size:
            raise ValueError(f"{other.meta.get('source', 'A stack')} is on another grid ({other.data.shape[1:]}, "
                             f"{other.voxel_size} µm) than {self.meta.get('source', 'the first')} "
                             f"({self.data.shape[1:]}, {self.voxel_size} µm): read grids of one resolution together.")
        meta = dict(self.meta)
        meta["source"] = "; ".join(str(m.get("source", "")) for m in (self.meta, other.meta))
        if "section_data_set_ids" in self.meta or "section_data_set_ids" in other.meta:
            meta["section_data_set_ids"] = (list(self.meta.get("section_data_set_ids", [-1] * len(self.genes)))
                                            + list(other.meta.get("section_data_set_ids",
                                                                  [-1] * len(other.genes))))
        return Stack(np.concatenate([self.data, other.data]), self.genes + other.genes, self.voxel_size,
                     self.origin, self.axes, meta)


@dataclass
class Atlas:
    """An annotation volume with its structure ontology.

    Attributes
    ----------
    annotation : numpy.ndarray of uint32, shape grid_shape
        Structure id per voxel; 0 = outside the brain.
    ontology : Ontology or None
        The structure tree (ids, acronyms, names, colours).
    voxel_size : tuple of float
        µm per voxel.
    origin : tuple of float
        µm position of voxel 0.
    axes : tuple of str
        Axis names, e.g. ("AP", "DV", "ML").
    name : str
        Where the atlas came from (a file, or a BrainGlobe atlas name).
    """

    annotation: np.ndarray
    ontology: Ontology | None
    voxel_size: tuple[float, ...]
    origin: tuple[float, ...] = ()
    axes: tuple[str, ...] = ()
    name: str = ""

    def __post_init__(self):
        self.origin = tuple(self.origin) or (0.0,) * self.annotation.ndim
        self.axes = tuple(self.axes) or ("z", "y", "x")[-self.annotation.ndim:]

    @property
    def mask(self) -> np.ndarray:
        """The brain: voxels with a structure id."""
        return self.annotation > 0
