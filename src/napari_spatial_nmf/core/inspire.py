"""INSPIRE: integration of spatial transcriptomics sections (Zhao et al. 2026, Nature Genetics).

The model of the authors' code (jiazhao97/INSPIRE@12b7516, ``networks.py``, ``model.py``;
methods-digest §3.3-§3.6), in PyTorch (the ``integration`` extra), on the CPU:

* an encoder maps each cell's log-normalised features to a latent Z (32-d): a graph
  attention layer over the cell's spatial neighbours (GAT variant) or an MLP on the
  precomputed ``[X, ÂX]`` (LGCN variant, minibatches, for large sections);
* a decoder reconstructs the features from ``[Z, section embedding]``;
* factor proportions β = softmax(Dense(ELU(Z))) and gene programs B = softmax(factors)
  (K x G, rows sum to 1, shared by all sections) decode the counts through
  x_ig ~ Poisson(l_i (β_i B)_g e^{γ_sg}) with a per-section gene scaling γ;
* discriminators chained along the section order (D_i tells section i from i+1) align
  the latent spaces adversarially, with a margin after 100 warm-up steps;
* the loss is 1.0 L_fe + coef_recon L_rec + coef_geom L_geom + 1.0 L_β + 1.0 L_gan, with
  Adamax (lr 5e-4, weight decay 1e-4) for the network, Adam (lr_d 5e-4, 1e-4) for the
  discriminators, one discriminator step then one network step, a fixed number of steps.

Deliberate departures (each exact in what it computes, or dropped because it computes
nothing):

* Attention is computed over the graph's edges only (sparse); the reference builds dense
  n x n matrices, which limits it to sections of a few tens of thousands of cells. Where
  the layer's input is narrower than its output (the decoder), the neighbours' inputs are
  averaged first and then transformed: the same result, since the weights of a cell's
  neighbours sum to 1.
* The geometry loss mean_i sum_j (cos(Z_i, Z_j) - cos(X_i, X_j))^2 is computed from
  ||Ẑᵀ Ẑ||² - 2 ||Ẑᵀ X̂||² + ||X̂ᵀ X̂||² (Ẑ, X̂ row-normalised), equal to the reference's
  sum over the dense n x n cosine matrices (``graph_cos``) but without them.
* The per-cell α of the reference (clamped to ±0.1 and used in no loss) is not computed.
* The LGCN factor prior divides by ``batch_size * n_sections`` (the reference hard-codes 4,
  its comment says n_slices): only a constant in the loss, the gradients are the same.
* The discriminator loss is computed on a detached Z (the reference clears those network
  gradients before the network step, so the updates are the same).
"""

from __future__ import annotations

import contextlib
from collections.abc import Generator
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.spatial import cKDTree

from ._progress import Progress
from .sections import Sections

VARIANTS = ("gat", "lgcn")
DEFAULTS = {"hidden_dims": (512, 32), "slice_emb_dim": 4, "n_hidden_d": 512, "lr": 5e-4, "weight_decay": 1e-4,
            "lr_d": 5e-4, "weight_decay_d": 1e-4, "coef_fe": 1.0, "coef_recon": 1.0, "coef_geom": 0.02,
            "coef_beta": 1.0, "coef_gan": 1.0, "prior": 5.0, "margin": 5.0, "margin_warmup_step": 100}


def torch_module():
    """The torch module, or an ImportError that names the extra to install.

    Also imports ``torch._inductor.config`` here, on the caller's thread: training switches
    on torch's deterministic algorithms, whose first call imports it, and on CUDA builds it
    imports triton; doing that first import in a worker thread of a Qt application killed
    napari (segmentation fault, issue 26). The tools call this at the call, on the GUI's
    thread, before their worker starts.
    """
    try:
        import torch
    except ImportError:
        raise ImportError("INSPIRE integration needs PyTorch: pip install 'napari-spatial-nmf[integration]' "
                          "(CPU is enough), or use method='joint_nnmf', which does not.") from None
    with contextlib.suppress(Exception):  # a torch without inductor, or a broken optional dependency
        import torch._inductor.config
    return torch


def min_distance(coords: np.ndarray) -> float:
    """The smallest non-zero distance between two cells (INSPIRE's ``min_dist_ref``)."""
    d, _ = cKDTree(coords).query(coords, k=min(len(coords), 8))
    d = d[:, 1:]
    return float(d[d > 0].min())


def radius_graph(coords: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Edges (rows, cols) of cells closer than ``radius``, with self-loops, sorted by row.

    INSPIRE's ``pairwise_distances(loc) < rad_cutoff`` (self included), from a k-d tree.
    """
    pairs = cKDTree(coords).query_pairs(radius, output_type="ndarray", eps=0.0)
    if len(pairs):
        d = np.linalg.norm(coords[pairs[:, 0]] - coords[pairs[:, 1]], axis=1)
        pairs = pairs[d < radius]  # strict, as the reference
    n = len(coords)
    rows = np.concatenate([pairs[:, 0], pairs[:, 1], np.arange(n)])
    cols = np.concatenate([pairs[:, 1], pairs[:, 0], np.arange(n)])
    order = np.lexsort((cols, rows))
    return rows[order], cols[order]


def neighbour_table(rows: np.ndarray, cols: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Each cell's neighbours as a padded (n, max degree) table (pad index n) and its mask."""
    deg = np.bincount(rows, minlength=n)
    width = int(deg.max())
    start = np.concatenate([[0], np.cumsum(deg)[:-1]])
    slot = np.arange(len(rows)) - start[rows]
    nbr = np.full((n, width), n, dtype=np.int64)
    nbr[rows, slot] = cols
    return nbr, (nbr < n).astype(np.float32)


def lgcn_features(lognorm: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``[X, ÂX]`` with Â = D^-1/2 G D^-1/2 of the radius graph (INSPIRE ``build_graph_LGCN``, k = 1)."""
    n = lognorm.shape[0]
    G = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n))
    d = np.asarray(G.sum(axis=1)).ravel()
    dinv = np.where(d > 0, 1 / np.sqrt(d), 0).astype(np.float32)
    A = sp.diags(dinv) @ G @ sp.diags(dinv)
    return np.concatenate([lognorm, np.asarray(A @ lognorm, dtype=np.float32)], axis=1)


def estimate_memory(sizes: list[int], n_genes: int, variant: str, width: int, batch_size: int) -> int:
    """Rough peak bytes of training (float32): features and counts, the widest activations,
    and the gathered neighbours (n x width x 512) of the attention layers.
    """
    h = DEFAULTS["hidden_dims"][0]
    if variant == "gat":
        n = sum(sizes)
        return int(4 * (6 * n * n_genes + 10 * n * h + 3 * n * width * h))
    b = batch_size * len(sizes)
    return int(4 * (3 * sum(sizes) * n_genes + 8 * b * (2 * n_genes + h)))


def _networks(torch, n_genes: int, n_in: int, n_factors: int, n_sections: int, variant: str):
    """The INSPIRE networks (built here so that torch is imported only when used)."""
    nn, F = torch.nn, torch.nn.functional
    hid, lat = DEFAULTS["hidden_dims"]
    emb = DEFAULTS["slice_emb_dim"]

    def dense(c_in, c_out, zero=False):
        layer = nn.Linear(c_in, c_out)
        bound = np.sqrt(6 / (c_in + c_out))
        if zero:
            nn.init.zeros_(layer.weight)
        else:
            nn.init.uniform_(layer.weight, -bound, bound)
        nn.init.zeros_(layer.bias)
        return layer

    class SparseGAT(nn.Module):
        """``GATSingleHead`` (temp 1) over a neighbour table: α_ij = softmax_j(σ(v0·h_i + v1·h_j) - 0.5).

        ``graph`` is (nbr, mask): each cell's neighbours (itself included) padded to a fixed
        width with the index n (a zero row), so the aggregation is one batched product.
        """

        def __init__(self, c_in, c_out):
            super().__init__()
            self.linear = dense(c_in, c_out)
            b = np.sqrt(6 / (c_out + 1))
            self.v0 = nn.Parameter(torch.empty(c_out, 1).uniform_(-b, b))
            self.v1 = nn.Parameter(torch.empty(c_out, 1).uniform_(-b, b))

        def forward(self, x, graph):
            nbr, mask = graph
            h = self.linear(x)
            f2 = torch.cat([(h @ self.v1)[:, 0], h.new_zeros(1)])
            w = torch.exp(torch.sigmoid((h @ self.v0) + f2[nbr]) - 0.5) * mask  # logits in (-0.5, 0.5): no overflow
            alpha = w / w.sum(dim=1, keepdim=True)
            if x.shape[1] < h.shape[1]:  # average the narrower inputs, then transform: the same result
                xp = torch.cat([x, x.new_zeros(1, x.shape[1])])
                return self.linear(torch.einsum("nd,ndc->nc", alpha, xp[nbr]))
            hp = torch.cat([h, h.new_zeros(1, h.shape[1])])
            return torch.einsum("nd,ndc->nc", alpha, hp[nbr])

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            if variant == "gat":
                self.enc1, self.dec1 = SparseGAT(n_in, hid), SparseGAT(lat + emb, hid)
            else:
                self.enc1, self.dec1 = dense(n_in, hid), dense(lat + emb, hid)
            self.enc2, self.dec2 = dense(hid, lat), dense(hid, n_genes)
            self.beta = dense(lat, n_factors)
            b = np.sqrt(6 / (n_factors + n_genes))
            self.factors = nn.Parameter(torch.empty(n_factors, n_genes).uniform_(-b, b))
            self.gamma = nn.Parameter(torch.zeros(n_sections, n_genes))
            self.slice_emb = nn.Embedding(n_sections, emb)

        def _layer(self, layer, x, graph):
            return layer(x, graph) if variant == "gat" else layer(x)

        def forward(self, x, s, graph=None):
            Z = self.enc2(F.elu(self._layer(self.enc1, x, graph)))
            beta = F.softmax(self.beta(F.elu(Z)), dim=1)
            e = self.slice_emb(torch.full((x.shape[0],), s, dtype=torch.long))
            recon = self.dec2(F.elu(self._layer(self.dec1, torch.cat([Z, e], dim=1), graph)))
            return Z, beta, recon

        def basis(self):
            return F.softmax(self.factors, dim=1)

    class Discriminator(nn.Module):
        def __init__(self):
            super().__init__()
            self.l1, self.l2, self.l3 = dense(lat, DEFAULTS["n_hidden_d"]), dense(DEFAULTS["n_hidden_d"], DEFAULTS[
                "n_hidden_d"]), dense(DEFAULTS["n_hidden_d"], 1)

        def forward(self, z):
            return torch.clamp(self.l3(F.relu(self.l2(F.relu(self.l1(z))))), -50.0, 50.0)

    return Net(), [Discriminator() for _ in range(n_sections - 1)]


@dataclass
class InspireResult:
    """A trained INSPIRE model's outputs.

    Attributes
    ----------
    latent : list of numpy.ndarray, float32, (n_s, 32)
        Z per section.
    proportions : list of numpy.ndarray, float32, (n_s, K)
        β per section (rows sum to 1): the spatial factors.
    programs : numpy.ndarray, float32, (K, G)
        B, the gene programs (rows sum to 1).
    gamma : numpy.ndarray, float32, (n_sections, G)
        Per-section gene scaling (log scale).
    losses : pandas.DataFrame
        Per logged step: ``step, d_loss, total, recon, fe, geom, beta, gan``.
    """

    latent: list
    proportions: list
    programs: np.ndarray
    gamma: np.ndarray
    losses: pd.DataFrame


def iter_train(sec: Sections, n_factors: int, n_steps: int, *, variant: str = "gat", radii=None,
               batch_size: int = 1024, coef_recon: float = 1.0, coef_geom: float = 0.02,
               random_state: int = 1234, log_every: int = 10, n_threads: int | None = None
               ) -> Generator[Progress, None, InspireResult]:
    """Train INSPIRE on prepared sections; one :class:`Progress` per ``log_every`` steps.

    Parameters
    ----------
    sec : Sections
        From :func:`napari_spatial_nmf.core.sections.prepare_sections`.
    n_factors : int
        K spatial factors.
    n_steps : int
        Training steps (the model has no stopping rule).
    variant : {"gat", "lgcn"}
        Graph attention on whole sections, or an MLP on ``[X, ÂX]`` with minibatches.
    radii : sequence of float, optional
        Each section's neighbour radius (coordinate units); default
        :func:`napari_spatial_nmf.core.neighbourhoods.data_radius` of each section (INSPIRE's
        own rule, 1.5 x the smallest distance in the first section, is what
        ``tl.integrate(rad_coef=1.5)`` asks for).
    batch_size : int
        Cells drawn per section and step (LGCN; with replacement, as the reference).
    coef_recon, coef_geom : float
        Loss weights (INSPIRE: 1.0 and 0.02).
    random_state : int
        Seeds torch and the minibatch draws (INSPIRE: 1234); CPU runs repeat exactly.
    log_every : int
        Steps between rows of the loss trace (progress is yielded within every step).
    n_threads : int, optional
        torch's CPU threads for this run (default: torch's own setting).

    Returns
    -------
    Generator yielding :class:`Progress`, returning :class:`InspireResult`.
    """
    torch = torch_module()
    # Threaded CPU kernels (the backward of the neighbour gathers) otherwise sum in a different order
    # in every process: the same seed would give a different model (measured on DLPFC).
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(int(random_state))
        rng = np.random.default_rng(int(random_state))
        if n_threads is not None:
            torch.set_num_threads(int(n_threads))
        S = len(sec.names)
        G = len(sec.genes)
        from .neighbourhoods import data_radius

        radii = [float(r) for r in radii] if radii is not None else [data_radius(c) for c in sec.coords]
        graphs = [radius_graph(c, r) for c, r in zip(sec.coords, radii)]
        t = torch.from_numpy
        if variant == "gat":
            feats = [t(x) for x in sec.lognorm]
            tgraphs = [tuple(t(a) for a in neighbour_table(r, c, len(x))) for (r, c), x in zip(graphs, sec.lognorm)]
            xhat = [torch.nn.functional.normalize(f, dim=1) for f in feats]
            xx = [float((xh.T @ xh).pow(2).sum()) for xh in xhat]  # ||X̂ᵀX̂||² is a constant of the data
        else:
            feats_np = [lgcn_features(x, r, c) for x, (r, c) in zip(sec.lognorm, graphs)]
        counts = [t(c.toarray()) for c in sec.counts] if variant == "gat" else None
        net, discs = _networks(torch, G, feats[0].shape[1] if variant == "gat" else 2 * G, n_factors, S, variant)
        opt = torch.optim.Adamax(net.parameters(), lr=DEFAULTS["lr"], weight_decay=DEFAULTS["weight_decay"])
        opt_d = torch.optim.Adam([p for d in discs for p in d.parameters()], lr=DEFAULTS["lr_d"],
                                 weight_decay=DEFAULTS["weight_decay_d"])
        softplus = torch.nn.functional.softplus
        n_total = sum(sec.sizes)
        rows, last = [], "starting"
        yield Progress(0, n_steps, f"INSPIRE ({variant.upper()}): {S} sections, {n_total:,} cells x {G:,} genes, "
                                   f"K = {n_factors}, neighbour radii {', '.join(f'{r:.3g}' for r in radii)}")
        for step in range(n_steps):
            Zs, betas, recons, xs, cs, ls = [], [], [], [], [], []
            for s in range(S):
                # a yield within every step, so Cancel is answered within a fraction of a step
                yield Progress(step, n_steps, f"step {step + 1}/{n_steps}: section {sec.names[s]}")
                if variant == "gat":
                    x, c, lib, graph = feats[s], counts[s], t(sec.library[s])[:, None], tgraphs[s]
                else:
                    idx = rng.choice(sec.sizes[s], size=batch_size)
                    x = t(feats_np[s][idx])
                    c = t(sec.counts[s][idx].toarray())
                    lib = t(sec.library[s][idx])[:, None]
                    graph = None
                Z, beta, recon = net(x, s, graph)
                Zs.append(Z)
                betas.append(beta)
                recons.append(recon)
                xs.append(x[:, :G])
                cs.append(c)
                ls.append(lib)
            margin = step > DEFAULTS["margin_warmup_step"]

            def dout(i, z, margin=margin):
                o = discs[i](z)
                return torch.clamp(o, -DEFAULTS["margin"], DEFAULTS["margin"]) if margin else o

            opt_d.zero_grad()
            loss_d = sum(softplus(-dout(i, Zs[i].detach())).mean() + softplus(dout(i, Zs[i + 1].detach())).mean()
                         for i in range(S - 1))
            (DEFAULTS["coef_gan"] * loss_d).backward()
            opt_d.step()
            basis = net.basis()
            fe = recon_l = geom = 0.0
            for s in range(S):
                fe = fe + torch.sqrt(((xs[s] - recons[s]) ** 2).sum(dim=1)).mean()
                log_lam = torch.log(betas[s] @ basis + 1e-6) + net.gamma[s]
                poisson = cs[s] * (torch.log(ls[s] + 1e-6) + log_lam) - ls[s] * torch.exp(log_lam)
                recon_l = recon_l - poisson.sum(1).mean()
                zn = torch.nn.functional.normalize(Zs[s], dim=1)
                if variant == "gat":
                    g = (zn.T @ zn).pow(2).sum() - 2 * (zn.T @ xhat[s]).pow(2).sum() + xx[s]
                    geom = geom + g / zn.shape[0]
                else:
                    xn = torch.nn.functional.normalize(xs[s], dim=1)
                    geom = geom + ((zn @ zn.T - xn @ xn.T) ** 2).sum(dim=1).mean()
            n_spot = n_total if variant == "gat" else batch_size * S
            p_aver = sum(b.sum(dim=0) for b in betas) / n_spot
            beta_l = -((DEFAULTS["prior"] - 1.0) * torch.log(p_aver + 1e-6)).sum()
            gan = sum(softplus(-dout(i, Zs[i + 1])).mean() for i in range(S - 1))
            total = (DEFAULTS["coef_fe"] * fe + coef_recon * recon_l + coef_geom * geom + DEFAULTS["coef_beta"] * beta_l
                     + DEFAULTS["coef_gan"] * gan)
            opt.zero_grad()
            total.backward()
            opt.step()
            if step % log_every == 0 or step == n_steps - 1:
                vals = {"step": step, "d_loss": loss_d.item(), "total": total.item(), "recon": recon_l.item(),
                        "fe": fe.item(), "geom": geom.item(), "beta": beta_l.item(), "gan": gan.item()}
                rows.append(vals)
                last = f"loss {vals['total']:.4g} (Poisson {vals['recon']:.4g}, adversarial {vals['gan']:.3g})"
            yield Progress(step + 1, n_steps, f"step {step + 1}/{n_steps}, {last}",
                           vals if step % log_every == 0 or step == n_steps - 1 else None)
        net.eval()
        latent, props = [], []
        with torch.no_grad():
            for s in range(S):
                if variant == "gat":
                    Z, beta, _ = net(feats[s], s, tgraphs[s])
                else:
                    parts = [net(t(feats_np[s][i:i + 10_000]), s) for i in range(0, sec.sizes[s], 10_000)]
                    Z, beta = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
                latent.append(Z.numpy().astype(np.float32))
                props.append(beta.numpy().astype(np.float32))
            programs = net.basis().numpy().astype(np.float32)
            gamma = net.gamma.detach().numpy().astype(np.float32)
        return InspireResult(latent, props, programs, gamma, pd.DataFrame(rows))
    finally:
        torch.use_deterministic_algorithms(deterministic)
