"""The staNMF sweep on the real BDGP images under the schemes of the two papers.

* Wu et al. 2016 (staNMF): 100 random initialisations per K (nothing resampled), Pearson
  cross-correlation, Amari-type error, K = 15..30; the paper selects K = 21.
* osNMF (Cahill et al. 2024): bootstrap of the images, cosine similarity, Hungarian matching.

Differences from the 2016 pipeline that we do not reproduce (documented in
docs/stability.md): their solver was SPAMS online dictionary learning with unit-norm atoms
(``mexTrainDL``), and each image was weighted by sqrt(1 / images of its gene).

    .venv/bin/python benchmarks/wu2016_bdgp.py
"""

import time

import benchmarks_common as common

from napari_spatial_nmf.core import drain
from napari_spatial_nmf.core.stability import iter_stability

SCHEMES = {
    "wu2016": {"resample": "none", "similarity": "pearson", "matching": "amari"},
    "osnmf": {"resample": "genes", "similarity": "cosine", "matching": "hungarian"},
}


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("-n", type=int, default=100)
    ap.add_argument("--schemes", nargs="+", default=list(SCHEMES), choices=list(SCHEMES))
    args = ap.parse_args(argv)
    X = common.bdgp_matrix()
    ks = list(range(15, 31))
    if args.quick:  # the same code on tiny sizes (CI)
        ks, args.n = [4, 5], 3
        X = X[:, :400]  # 400 of the 1,640 images
    out = {"n_replicates": args.n}
    for name in args.schemes:
        scheme = SCHEMES[name]
        t = time.perf_counter()
        res = drain(iter_stability(X, ks, args.n, batch_size=50, **scheme))
        out[name] = {"scheme": scheme, "seconds": time.perf_counter() - t, "best_k": res.best_k,
                     "table": res.table.to_dict(orient="records")}
        print(name, res.best_k, f"{out[name]['seconds']:.0f} s", flush=True)
        print(res.table.to_string(index=False), flush=True)
    common.write(args, "wu2016_bdgp", out)


if __name__ == "__main__":
    main()
