"""The base of the generative SID models (:class:`~sidkit.models.CausalSID`,
:class:`~sidkit.models.TIGER`): the catalogue's SIDs, ``recommend`` through ``decode``
(trie-constrained beam search), and the codes saved next to the weights."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import ArtifactError, DataError
from .base import check_exclude
from .sid_tokens import SIDTokens
from .torch_base import TorchRecommender


class SIDRecommender(TorchRecommender):
    """Shared plumbing of the generative SID models (:class:`CausalSID`, TIGER): the
    catalogue's SIDs (``tokens_``) from ``fit(codes=...)`` or the ``codes`` parameter,
    ``recommend`` through :meth:`decode`, and saving the codes next to the weights."""

    scores_all_items = False
    title = "SID"                     # the model's name in messages
    user_buckets = 0                  # user-token buckets of the vocabulary (TIGER: 2,000)

    def _sid_tokens(self, data, codes) -> SIDTokens:
        """SIDTokens of ``codes`` (or the ``codes`` path) in the catalogue order of ``data``."""
        from ..types import Codes

        if codes is None:
            if self.codes is None:
                raise DataError(f"the {self.title} model needs the Semantic IDs of the catalogue",
                                "pass fit(data, codes=Codes) or the constructor's codes='RUN/codes'"
                                + (" (or set id_only=True for the ID-only ablation)" if self.name == "causal_sid" else ""))
            from pathlib import Path

            path = Path(self.codes)
            codes = Codes.load(path / "codes" if (path / "codes.npz").is_file() else path)  # RUN/codes or a stem
        if isinstance(codes, SIDTokens):
            codes = codes.codes
        if not isinstance(codes, Codes):
            raise DataError(f"codes must be a Codes artifact or SIDTokens, got {type(codes).__name__}",
                            "load them with sidkit.types.Codes.load(RUN/codes)")
        return SIDTokens.from_codes(codes, item_ids=np.asarray(data.item_ids), user_buckets=self.user_buckets)

    def _resolve_tokens(self, data, codes) -> SIDTokens:
        return self._sid_tokens(data, codes)

    def fit(self, data, *, codes=None, **kw) -> "SIDRecommender":
        """Fit on ``data`` (a SequenceData or Split); ``codes``: the catalogue's Codes (or
        SIDTokens).  Other keywords: those of :meth:`TorchRecommender.fit` (train, seed,
        device, ...)."""
        from ..eval.harness import as_sequence_data

        data = as_sequence_data(data)
        self._validate_params()
        self.tokens_ = self._resolve_tokens(data, codes)
        return super().fit(data, **kw)

    def _checked_tokens(self, n_items: int) -> SIDTokens:
        """``tokens_``, checked against the catalogue size (for ``build_module``)."""
        self._validate_params()
        t = self.tokens_
        if t.n_items != n_items:
            raise ArtifactError(f"the SIDs cover {t.n_items} items but the catalogue has {n_items}",
                                "use the codes of this catalogue")
        return t

    def decode(self, history: np.ndarray, k: int, **kw):
        raise NotImplementedError

    def recommend(self, history: np.ndarray, k: int, users=None, exclude=None) -> np.ndarray:
        """(B, k) catalogue indices by trie-constrained beam search (width ``max(beam, k)``);
        ``users``: the (B,) user ids (models with user tokens); ``exclude``: optional (B, N)
        boolean mask of items not to return (e.g. the seen items), removed inside the beam
        so that the list is still filled with other items; ``-1`` only in the slots beyond
        the number of items left."""
        self._check_fitted()
        h = self._check_history(history)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise DataError(f"k must be an integer >= 1, got {k!r}", "ask for e.g. k=10 items")
        kw = {}
        if users is not None:
            users = np.asarray(users).astype(str).ravel()
            if users.shape[0] != h.shape[0]:
                raise DataError(f"users must have one id per history row ({h.shape[0]}), got {users.shape[0]}",
                                "pass the user id of each history")
            if getattr(self, "uses_user_ids", False):
                kw["users"] = users
        if exclude is not None:
            kw["exclude"] = check_exclude(exclude, h.shape[0], self.n_items)
        kk = min(int(k), self.n_items)
        out = np.full((h.shape[0], int(k)), -1, np.int64)
        if h.shape[0]:
            out[:, :kk] = self.decode(h, kk, **kw).items
        return out

    def scores(self, history):
        raise NotImplementedError(f"{self.title} generates items; use recommend()")

    # ------------------------------------------------------------------ save / load
    def _state(self) -> dict[str, np.ndarray]:
        st = super()._state()
        st["sid.codes"] = np.asarray(self.tokens_.codes.codes, np.int64)
        st["sid.lengths"] = np.asarray(self.tokens_.codes.lengths, np.int64)
        return st

    def _extra(self) -> dict[str, Any]:
        return {**super()._extra(), "codebook_sizes": list(self.tokens_.codebook_sizes)}

    def _fingerprint_extra(self) -> dict[str, Any]:
        from ..io import hash_obj

        c = self.tokens_.codes
        return {"sids": hash_obj({"codes": np.asarray(c.codes, np.int64).tolist(),
                                  "lengths": np.asarray(c.lengths, np.int64).tolist(),
                                  "sizes": [int(k) for k in self.tokens_.codebook_sizes]})}

    def _set_extra(self, extra: dict[str, Any]) -> None:
        super()._set_extra(extra)
        self._codebook_sizes = extra.get("codebook_sizes")

    def _set_state(self, state) -> None:
        from ..types import Codes

        state = dict(state)
        if "sid.codes" not in state or "sid.lengths" not in state or not getattr(self, "_codebook_sizes", None):
            raise ArtifactError(f"the saved {self.title} model holds no codes (sid.codes / codebook_sizes)",
                                "retrain and save it with this version of sidkit")
        codes = Codes(state.pop("sid.codes"), tuple(self._codebook_sizes), lengths=state.pop("sid.lengths"),
                      item_ids=self.item_ids_)
        self.tokens_ = SIDTokens(codes, user_buckets=self.user_buckets)
        super()._set_state(state)
