"""The staNMF sweep on the real BDGP images under the schemes of the two papers.

* Wu et al. 2016 (staNMF): 100 random initialisations per K (nothing resampled), Pearson
  cross-correlation, Amari-type error, K = 15..30; the paper selects K = 21.
* osNMF (Cahill et al. 2024): bootstrap of the images, cosine similarity, Hungarian matching.

Differences from the 2016 pipeline that we do not reproduce (documented in
docs/stability.md): their solver was SPAMS online dictionary learning with unit-norm atoms
(``mexTrainDL``), and each image was weighted by sqrt(1 / images of its gene).

    .venv/bin/python benchmarks/wu2016_bdgp.py
"""

import argparse
import json
import time
from pathlib import Path

from benchmarks_common import bdgp_matrix

from napari_spatial_nmf.core import drain
from napari_spatial_nmf.core.stability import iter_stability

SCHEMES = {
    "wu2016": {"resample": "none", "similarity": "pearson", "matching": "amari"},
    "osnmf": {"resample": "genes", "similarity": "cosine", "matching": "hungarian"},
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    args = ap.parse_args()
    X = bdgp_matrix()
    ks = list(range(15, 31))
    out = {"n_replicates": args.n}
    for name in args.schemes:
        scheme = SCHEMES[name]
        t = time.perf_counter()
        res = drain(iter_stability(X, ks, args.n, batch_size=50, **scheme))
        out[name] = {"scheme": scheme, "seconds": time.perf_counter() - t, "best_k": res.best_k,
                     "table": res.table.to_dict(orient="records")}
        print(name, res.best_k, f"{out[name]['seconds']:.0f} s", flush=True)
        print(res.table.to_string(index=False), flush=True)
    (Path(__file__).parent / "results" / "wu2016_bdgp.json").write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
