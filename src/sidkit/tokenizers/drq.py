"""DRQ (the DRQ paper): decoupled residual quantization.

Stage 1 learns the continuous geometry: an MLP auto-encoder on the item embeddings
trained with a reconstruction loss and, optionally, a behavioural InfoNCE loss on
co-engaged item pairs (``fit(X, pairs=...)``; in-batch negatives, temperature
``temperature``, weight ``contrastive_weight``).  Stage 1 is then frozen, and stage 2
does the discrete distribution matching on the frozen latents with RQ-KMeans
(:class:`~sidkit.tokenizers.rq.RQKMeans`, optionally balanced).  Quantization
never back-propagates into the geometry, unlike RQ-VAE.

``encode`` = encoder -> RQ-KMeans codes; ``decode`` = codes -> latent (sum of
codewords) -> decoder -> embedding.  :func:`cooccurrence_pairs` builds the pairs from
per-user item-index sequences.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from ..errors import DataError
from ..types import Codes
from ..utils import resolve_device, torch_generator
from .base import Bool, Int, Ints, Real, Tokenizer, check_embeddings, register
from .rq import RQKMeans
from .rqvae import (NETWORK_CONSTRAINTS, AutoEncoder, _check_network_params, _check_positive,
                    _check_sizes, _Trainer, flatten_params, init_params_, load_flat_params)

__all__ = ["DRQ", "cooccurrence_pairs"]

_RQ_PREFIX = "rq_"


def cooccurrence_pairs(sequences: Any, window: int = 1, *, lengths: Any = None,
                       unique: bool = False) -> np.ndarray:
    """Co-engaged item pairs ``(M, 2)`` from per-user item-index sequences.

    ``sequences`` is a list of 1-D integer arrays (one per user, in time order), or a
    flat array with ``lengths`` giving each user's sequence length.  Every two items
    at most ``window`` positions apart in the same user's sequence form a pair
    ``(earlier, later)``; self-pairs and negative indices (padding) are dropped.
    ``unique=True`` keeps each unordered pair once.  Vectorised: one pass per offset.
    """
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise DataError(f"window must be a positive integer, got {window!r}", "use window=1")
    if lengths is None:
        seqs = [np.asarray(s).reshape(-1) for s in sequences]
        lens = np.fromiter((s.size for s in seqs), dtype=np.int64, count=len(seqs))
        flat = np.concatenate(seqs) if seqs else np.zeros(0, np.int64)
    else:
        flat = np.asarray(sequences).reshape(-1)
        lens = np.asarray(lengths, dtype=np.int64).reshape(-1)
        if lens.sum() != flat.size or (lens < 0).any():
            raise DataError(f"lengths sum to {int(lens.sum())} but the flat sequence has "
                            f"{flat.size} items", "pass one non-negative length per user")
    if flat.size and not np.issubdtype(flat.dtype, np.integer):
        raise DataError(f"sequences must hold integer item indices, got dtype {flat.dtype}",
                        "map item ids to row indices of the embedding matrix first")
    flat = flat.astype(np.int64, copy=False)
    user = np.repeat(np.arange(lens.size), lens)
    out = []
    for k in range(1, int(window) + 1):
        if flat.size <= k:
            break
        a, b = flat[:-k], flat[k:]
        keep = (user[:-k] == user[k:]) & (a != b) & (a >= 0) & (b >= 0)
        out.append(np.stack([a[keep], b[keep]], 1))
    pairs = np.concatenate(out, 0) if out else np.zeros((0, 2), np.int64)
    if unique and pairs.size:
        pairs = np.unique(np.sort(pairs, axis=1), axis=0)
    return pairs


def _check_pairs(pairs: Any, n: int) -> np.ndarray | None:
    if pairs is None:
        return None
    p = np.asarray(pairs)
    if p.ndim != 2 or p.shape[1] != 2 or not np.issubdtype(p.dtype, np.integer):
        raise DataError(f"pairs must be an (M, 2) integer array of item row indices, got shape "
                        f"{p.shape} dtype {p.dtype}", "build them with cooccurrence_pairs(sequences)")
    if p.shape[0] == 0:
        return None
    if p.min() < 0 or p.max() >= n:
        raise DataError(f"pairs reference rows outside 0..{n - 1} (min {int(p.min())}, "
                        f"max {int(p.max())})", "pairs index the rows of X")
    return p.astype(np.int64, copy=False)


@register
class DRQ(Tokenizer):
    """Decoupled residual quantization: frozen auto-encoder latents -> RQ-KMeans.

    Parameters
    ----------
    codebook_sizes, n_levels : RQ-KMeans codebooks (None = from the catalogue size).
    hidden_sizes, latent_dim : encoder MLP ``d -> hidden... -> latent_dim`` (decoder mirrors).
    epochs, batch_size, lr, weight_decay, patience, tol : stage-1 AdamW training with early
        stopping on the epoch training loss (``patience=0`` disables it).
    contrastive_weight, temperature : behavioural InfoNCE on ``pairs`` (in-batch
        negatives, symmetric), added to the reconstruction loss.
    balanced, balance_tolerance, n_iter, max_points_per_centroid : stage-2 RQ-KMeans.
    resolve_collisions : extra disambiguation level (TIGER), as RQ-KMeans.
    random_state, device, verbose : seed, ``"auto"``/``"cpu"``/``"cuda"``, progress bar.

    Fitted attributes
    -----------------
    weights_ (flat auto-encoder parameters), ``rq_*`` (the stage-2 RQ-KMeans state),
    quantizer_ (that RQ-KMeans), history_, n_features_in_, n_epochs_.
    """

    name = "drq"
    _state_attrs = ("weights_",) + tuple(_RQ_PREFIX + a for a in RQKMeans._state_attrs)
    _parameter_constraints = {
        "codebook_sizes": [None, Int(ge=2), Ints(ge=2)], **NETWORK_CONSTRAINTS,
        "batch_size": [Int(ge=1)], "contrastive_weight": [Real(ge=0)],
        "temperature": [Real(gt=0)], "balanced": [Bool()], "balance_tolerance": [Real(ge=0, lt=1)],
        "n_iter": [Int(ge=1)], "max_points_per_centroid": [None, Int(ge=1)],
    }

    def __init__(
        self,
        codebook_sizes: Sequence[int] | None = None,
        n_levels: int | None = None,
        hidden_sizes: Sequence[int] = (512, 256),
        latent_dim: int = 64,
        epochs: int = 50,
        batch_size: int = 1024,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        patience: int = 5,
        tol: float = 1e-4,
        contrastive_weight: float = 0.1,
        temperature: float = 0.1,
        balanced: bool = False,
        balance_tolerance: float = 0.1,
        n_iter: int = 20,
        max_points_per_centroid: int | None = 256,
        resolve_collisions: bool = True,
        random_state: int | None = 0,
        device: str = "auto",
        verbose: bool = False,
    ):
        self._store_params(locals())

    # ---------------------------------------------------------------- helpers
    def _validate_params(self) -> None:
        _check_network_params(self)
        _check_positive("temperature", self.temperature, integer=False)
        _check_positive("contrastive_weight", self.contrastive_weight, integer=False, allow_zero=True)
        if self.codebook_sizes is not None and not isinstance(self.codebook_sizes, (int, np.integer)):
            _check_sizes(self.codebook_sizes)

    def _make_quantizer(self) -> RQKMeans:
        return RQKMeans(codebook_sizes=self.codebook_sizes, n_levels=self.n_levels,
                        n_iter=self.n_iter, max_points_per_centroid=self.max_points_per_centroid,
                        balanced=self.balanced, balance_tolerance=self.balance_tolerance,
                        resolve_collisions=self.resolve_collisions,
                        random_state=self.random_state, device=self.device)

    @property
    def quantizer_(self) -> RQKMeans:
        """The fitted stage-2 RQ-KMeans (rebuilt from the ``rq_*`` arrays)."""
        self._check_fitted()
        q = getattr(self, "_quantizer", None)
        if q is None:
            q = self._make_quantizer()
            for a in RQKMeans._state_attrs:
                setattr(q, a, getattr(self, _RQ_PREFIX + a))
            q._set_extra_state({"fit_stats": getattr(self, "rq_fit_stats_", {})})
            self._quantizer = q
        return q

    def _ae(self):
        """The frozen auto-encoder rebuilt from ``weights_`` (cached)."""
        cached = getattr(self, "_torch_ae", None)
        if cached is not None and cached[0] is self.weights_:
            return cached[1]
        ae = AutoEncoder(int(self.n_features_in_), self.hidden_sizes, self.latent_dim)
        ae = ae.to(resolve_device(self.device))
        load_flat_params(ae, self.weights_)
        ae.eval()
        self._torch_ae = (self.weights_, ae)
        return ae

    # ---------------------------------------------------------------- fitting
    def _train_autoencoder(self, X: np.ndarray, pairs: np.ndarray | None):
        import torch
        import torch.nn.functional as F

        n, d = X.shape
        dev = resolve_device(self.device)
        gen = torch_generator(self.random_state)
        ae = AutoEncoder(d, self.hidden_sizes, self.latent_dim)
        init_params_(ae, gen)
        ae = ae.to(dev)
        Xt = torch.from_numpy(X).to(dev)
        Pt = torch.from_numpy(pairs).to(dev) if pairs is not None else None
        trainer = _Trainer(self, ae.parameters(), n, "drq stage 1")
        bs = trainer.batch_size
        pbs = int(min(self.batch_size, pairs.shape[0])) if pairs is not None else 0
        w = float(self.contrastive_weight)
        tau = float(self.temperature)
        history: list[dict[str, Any]] = []
        ae.train()
        for epoch in trainer.epochs:
            perm = torch.randperm(n, generator=gen).to(dev)
            acc = torch.zeros(3, dtype=torch.float64, device=dev)
            steps = 0
            for s in range(0, n, bs):
                xb = Xt[perm[s:s + bs]]
                recon = ((ae.decoder(ae.encoder(xb)) - xb) ** 2).mean()
                loss = recon
                nce = torch.zeros((), device=dev)
                if Pt is not None and w > 0:
                    pick = torch.randint(Pt.shape[0], (pbs,), generator=gen).to(dev)
                    pb = Pt[pick]
                    za = F.normalize(ae.encoder(Xt[pb[:, 0]]), dim=1)
                    zb = F.normalize(ae.encoder(Xt[pb[:, 1]]), dim=1)
                    logits = za @ zb.T / tau
                    target = torch.arange(pbs, device=dev)
                    nce = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
                    loss = loss + w * nce
                trainer.step(loss)
                acc += torch.stack([loss.detach(), recon.detach(), nce.detach()]).double()
                steps += 1
            m = acc.cpu().numpy() / max(steps, 1)
            history.append({"epoch": epoch, "loss": float(m[0]), "recon": float(m[1]),
                            "infonce": float(m[2])})
            if trainer.stop(m[0]):
                break
        ae.eval()
        return ae, history

    def fit(self, X: Any, y: Any = None, pairs: Any = None) -> "DRQ":
        """Stage 1 (auto-encoder, optional InfoNCE on ``pairs``), freeze, stage 2 (RQ-KMeans).

        ``pairs``: optional ``(M, 2)`` row indices of co-engaged items
        (see :func:`cooccurrence_pairs`).
        """
        self._check_params()
        self._validate_params()
        X = check_embeddings(X, min_items=2)
        P = _check_pairs(pairs, X.shape[0])
        ae, history = self._train_autoencoder(X, P)
        self.n_features_in_ = int(X.shape[1])
        self.weights_ = flatten_params(ae)
        self.history_ = history
        self.n_epochs_ = len(history)
        self._torch_ae = (self.weights_, ae)
        Z = self._latent_array(X)
        q = self._make_quantizer()
        self._train_codes = self._relabel(q.fit_encode(Z))
        for a in RQKMeans._state_attrs:
            setattr(self, _RQ_PREFIX + a, getattr(q, a))
        self.rq_fit_stats_ = getattr(q, "fit_stats_", {})
        self._quantizer = q
        return self

    def fit_encode(self, X: Any, y: Any = None, pairs: Any = None) -> Codes:
        """Fit and return the training codes (the balanced assignment when ``balanced``)."""
        self.fit(X, y, pairs=pairs)
        codes = self._train_codes
        del self._train_codes
        return codes

    # --------------------------------------------------------------- encoding
    def _latent_array(self, X: np.ndarray, chunk: int = 65536) -> np.ndarray:
        import torch

        ae = self._ae()
        dev = next(ae.parameters()).device
        out = np.empty((X.shape[0], int(self.latent_dim)), np.float32)
        with torch.inference_mode():
            for s in range(0, X.shape[0], chunk):
                out[s:s + chunk] = ae.encoder(torch.from_numpy(X[s:s + chunk]).to(dev)).cpu().numpy()
        return out

    def latent(self, X: Any) -> np.ndarray:
        """The frozen stage-1 latents of ``X`` (what RQ-KMeans quantizes)."""
        return self._latent_array(self._check_X(X))

    def _relabel(self, codes: Codes) -> Codes:
        params = {**self.get_params(), "codebook_sizes": list(codes.codebook_sizes),
                  "stage2": codes.params}
        return codes.replace(method=self.name, params=params)

    def encode(self, X: Any) -> Codes:
        """Encoder -> RQ-KMeans :meth:`~RQKMeans.encode` of the latents: a catalogue
        item gets its fit-time SID whatever the batch, a new item a SID no catalogue
        item holds (with ``resolve_collisions``)."""
        return self._relabel(self.quantizer_.encode(self.latent(X)))

    def encode_new(self, X: Any) -> Codes:
        """As :meth:`encode`, and the new items join the catalogue (see
        :meth:`RQKMeans.encode_new`)."""
        q = self.quantizer_
        out = self._relabel(q.encode_new(self.latent(X)))
        for a in RQKMeans._state_attrs:  # the catalogue grew
            setattr(self, _RQ_PREFIX + a, getattr(q, a))
        return out

    def decode(self, codes: Codes | np.ndarray) -> np.ndarray:
        """codes -> latent (sum of codewords) -> decoder -> embedding."""
        import torch

        Z = self.quantizer_.decode(codes)
        ae = self._ae()
        dev = next(ae.parameters()).device
        with torch.inference_mode():
            return ae.decoder(torch.from_numpy(np.ascontiguousarray(Z, np.float32)).to(dev)).cpu().numpy()

    # ------------------------------------------------------------- save/load
    def _extra_state(self) -> dict[str, Any]:
        return {"n_features_in": int(self.n_features_in_), "history": self.history_,
                "n_epochs": int(self.n_epochs_), "rq_fit_stats": self.rq_fit_stats_}

    def _set_extra_state(self, state: dict[str, Any]) -> None:
        self.n_features_in_ = int(state["n_features_in"])
        self.history_ = list(state.get("history", []))
        self.n_epochs_ = int(state.get("n_epochs", len(self.history_)))
        self.rq_fit_stats_ = state.get("rq_fit_stats", {})
        self._quantizer = None
        self._torch_ae = None
