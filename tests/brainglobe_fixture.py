"""A small BrainGlobe (brainglobe-atlasapi v3 layout) atlas built from the shipped CCFv3 200 µm grid.

Only for tests: the layout is the one brainglobe-atlasapi 3 reads offline (a manifest,
a terminology csv, OME-Zarr annotation and template), written with ngff-zarr.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

NAME = "nsn_ccf_mouse_200um"


def write_ccf_200um(folder: Path, atlas) -> Path:
    """Write ``atlas`` (an :class:`napari_spatial_nmf.io.Atlas` on the 200 µm grid) as BrainGlobe
    atlas ``NAME`` under ``folder`` (the brainglobe_dir); returns the manifest path."""
    import ngff_zarr as nz

    root = Path(folder) / "brainglobe-atlasapi"
    onto = atlas.ontology
    res = [float(v) for v in atlas.voxel_size]
    rows = []
    for i, row in onto.table.iterrows():
        path = [int(a) for a in onto.ancestors(int(i))][::-1]
        rows.append({"identifier": int(i), "abbreviation": row["acronym"], "name": row["name"],
                     "root_identifier_path": "[" + ",".join(map(str, path)) + "]",
                     "color_hex_triplet": "#" + row["color"]})
    term = root / "terminologies" / "ccf2017" / "1_0"
    term.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(term / "terminology.csv", index=False)
    scale = {d: r / 1000 for d, r in zip("zyx", res)}  # BrainGlobe stores mm
    for sub, name, data in (("annotation-sets/ccf2017_200um/1_0", "annotations_compressed.ome.zarr",
                             atlas.annotation.astype(np.uint32)),
                            ("templates/ccf_mask_200um/1_0", "template.ome.zarr",
                             (atlas.annotation > 0).astype(np.uint16) * 255)):
        img = nz.to_ngff_image(data, dims=["z", "y", "x"], scale=scale)
        (root / sub).mkdir(parents=True)
        nz.to_ngff_zarr(str(root / sub / name), nz.to_multiscales(img, scale_factors=[]), version="0.5")
    # the 4-D masks OME-Zarr brainglobe-atlasapi 3 downloads with an atlas (one channel per structure; here one,
    # the whole brain) and its index of label values
    import zarr

    masks_path = root / "annotation-sets/ccf2017_200um/1_0/annotations.ome.zarr"
    mask = (atlas.annotation > 0).astype(np.uint8)[None]
    img = nz.to_ngff_image(mask, dims=["c", "z", "y", "x"], scale={"c": 1.0, **scale})
    nz.to_ngff_zarr(str(masks_path), nz.to_multiscales(img, scale_factors=[]), version="0.5")
    zarr.open_group(str(masks_path), mode="a").create_array("annotation_values", data=np.array([997], np.uint32))
    zarr.consolidate_metadata(str(masks_path))
    space = root / "coordinate-spaces" / "ccf_200um" / "1_0"
    space.mkdir(parents=True)
    (space / "coordinate_space.json").write_text(json.dumps({"name": "ccf_200um", "orientation": "asr",
                                                             "resolution": res}))
    manifest = {"name": NAME, "citation": "Wang et al. 2020, Cell 181:936", "atlas_link": "https://atlas.brain-map.org",
                "species": "Mus musculus", "symmetric": True, "resolution": res, "orientation": "asr",
                "version": "1.0", "shape": list(atlas.annotation.shape), "additional_references": [],
                "terminology": {"name": "ccf2017", "location": "/terminologies/ccf2017/1_0"},
                "coordinate_space": {"name": "ccf_200um", "location": "/coordinate-spaces/ccf_200um/1_0"},
                "template": {"name": "ccf_mask_200um"},
                "annotation_set": {"name": "ccf2017_200um", "location": "/annotation-sets/ccf2017_200um/1_0",
                                   "template": {"name": "ccf_mask_200um",
                                                "location": "/templates/ccf_mask_200um/1_0"}}}
    path = root / "atlases" / NAME / "1_0" / "manifest.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(manifest, indent=2))
    return path
