"""Causal SID model: a decoder-only transformer over each user's flattened SID stream.

Every item is written as its ``W = n_levels`` SID token slots (:class:`SIDTokens`:
level tokens, ``END`` for a short variable-length SID, then ``PAD``), so a history of
``H`` items is a grid of ``H * W`` tokens in which slot ``s`` of item ``j`` sits at
position ``j * W + s``.  Training windows hold ``max_len + 1`` items
(:meth:`SequenceData.windows`); one forward pass over the window's ``(max_len + 1) * W - 1``
input tokens predicts every token of every target item (teacher forcing; cross-entropy
on the SID tokens of the target items only, never on ``PAD`` slots).  Inputs are token
embeddings (std 0.02 at init, unscaled) + absolute position embeddings + an optional
level embedding (``position % W``); the output head is tied to the token embedding.
``PAD`` slots are never attended to (a position always attends to itself).

Decoding (:meth:`CausalSID.recommend`) is the trie-constrained :func:`beam_search` with
a KV cache: the history grid is encoded once per user (its per-layer K/V keep ``B``
rows, reached per beam through ``rows // beam`` by broadcasting, never copied per
beam); each later step feeds the one new token of every beam and appends its K/V to a
per-beam cache that ``reorder`` index-selects.  The positions of the decoded tokens are
those of the next item's slots, exactly as in training.

Padding is never computed: training batches and decoded histories are split into groups
of similar real length, each trimmed to its longest real history
(:meth:`~sidkit.models.torch_base.TorchRecommender.length_groups`).  Positions are absolute
in the padded grid, so a trimmed group is embedded from position ``start`` = the number
of columns dropped; ``PAD`` is never attended to, so each real token computes what it
computes in the padded grid, up to float rounding (dropout masks aside: they are drawn
over the trimmed tensors).

The model needs the SIDs of the catalogue: ``fit(data, codes=...)`` (a
:class:`~sidkit.types.Codes` or :class:`SIDTokens`), or the constructor's ``codes``
(a run's ``codes`` stage directory, e.g. ``RUN/codes``, or the stem of a saved ``Codes``).  ``id_only=True`` is the ID-only ablation:
each item is one token (its catalogue index), decoded by the same code.  Saving stores
the codes (catalogue order) in ``weights.safetensors`` next to the weights and their
codebook sizes in ``model.json``.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError
from .base import register
from .generative import SIDRecommender
from .sid_tokens import PAD, SIDTokens


def _build_module(vocab: int, W: int, hidden: int, n_layers: int, n_heads: int, n_pos: int,
                  dropout: float, ffn: int, level_emb: bool, attn_dropout: float = 0.0):
    import torch
    import torch.nn.functional as F
    from torch import nn

    from .layers import dropout as dropout_layer

    dh = hidden // n_heads

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(hidden, eps=1e-8)
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.proj = nn.Linear(hidden, hidden)
            self.ln2 = nn.LayerNorm(hidden, eps=1e-8)
            self.ff = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), dropout_layer(dropout), nn.Linear(ffn, hidden))
            self.drop = dropout_layer(dropout)

        def _qkv(self, x):
            B, L, _ = x.shape
            return self.qkv(self.ln1(x)).view(B, L, 3, n_heads, dh).permute(2, 0, 3, 1, 4)  # 3 x (B, h, L, dh)

        def _out(self, x, a):
            B, L, _ = x.shape
            x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, L, hidden)))
            return x + self.drop(self.ff(self.ln2(x)))

        def forward(self, x, mask):
            """Full sequences: (B, L, D) -> (B, L, D), and this layer's K, V (B, h, L, dh)."""
            q, k, v = self._qkv(x)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=attn_dropout if self.training else 0.0)
            return self._out(x, a), k, v

        def step(self, x, hkT, hv, hbias, dk, dv):
            """One new token per row.  x (R, 1, D); the history's keys hkT (B h, dh, T) and
            values hv (B h, T, dh), laid out per (user, head) so both products are plain
            ``bmm`` on the cached tensors (never copied per step), with the additive key mask
            hbias (B, 1, 1, T), shared by the J = R // B rows of a user; decoded dk/dv (R, h, t, dh)."""
            R = x.shape[0]
            T = hv.shape[1]
            B = hv.shape[0] // n_heads
            J = R // B
            q, k, v = self._qkv(x)                                    # (R, h, 1, dh)
            dk = torch.cat([dk, k], 2)
            dv = torch.cat([dv, v], 2)
            scale = dh ** -0.5
            q0 = q[:, :, 0]                                           # (R, h, dh)
            qb = q0.reshape(B, J, n_heads, dh).transpose(1, 2).reshape(B * n_heads, J, dh)
            s_hist = torch.bmm(qb, hkT).view(B, n_heads, J, T) * scale + hbias            # (B, h, J, T)
            s_dec = torch.einsum("rhd,rhtd->rht", q0, dk).view(B, J, n_heads, -1).transpose(1, 2) * scale
            p = torch.softmax(torch.cat([s_hist, s_dec], -1), -1)    # (B, h, J, T + t)
            a = torch.bmm(p[..., :T].reshape(B * n_heads, J, T), hv).view(B, n_heads, J, dh)
            a = a.transpose(1, 2).reshape(R, n_heads, dh) + \
                torch.einsum("rht,rhtd->rhd", p[..., T:].transpose(1, 2).reshape(R, n_heads, -1), dv)
            return self._out(x, a[:, :, None]), dk, dv

    class CausalSIDModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(vocab, hidden, padding_idx=PAD)
            self.pos = nn.Embedding(n_pos, hidden)
            self.lvl = nn.Embedding(W, hidden) if level_emb else None
            self.drop = dropout_layer(dropout)
            self.blocks = nn.ModuleList(Block() for _ in range(n_layers))
            self.ln = nn.LayerNorm(hidden, eps=1e-8)
            # small embeddings (std 0.02), unscaled on input: with the tied head an input
            # scaled by sqrt(hidden) dominates the residual and the untrained model predicts
            # its own input token with a loss far above ln V
            for emb in (self.tok, self.pos) + ((self.lvl,) if level_emb else ()):
                nn.init.normal_(emb.weight, std=0.02)
            with torch.no_grad():
                self.tok.weight[PAD].zero_()

        def embed(self, tokens, start: int):
            """Tokens at absolute positions ``start .. start + L - 1``."""
            L = tokens.shape[1]
            pos = torch.arange(start, start + L, device=tokens.device)
            x = self.tok(tokens) + self.pos(pos)[None]
            if self.lvl is not None:
                x = x + self.lvl(pos % W)[None]
            return self.drop(x)

        def _mask(self, tokens):
            L = tokens.shape[1]
            real = tokens != PAD
            eye = torch.eye(L, dtype=torch.bool, device=tokens.device)
            return ((torch.ones(L, L, dtype=torch.bool, device=tokens.device).tril()[None] & real[:, None, :])
                    | eye[None])[:, None]

        def forward(self, tokens, return_kv: bool = False, start: int = 0):
            """(B, L) tokens at positions ``start .. start + L - 1`` -> (B, L, D) states (and
            per-layer K/V).  A left-padded grid trimmed of its first ``start`` columns (all
            ``PAD``) gives the states of the untrimmed grid's last ``L`` columns."""
            x = self.embed(tokens, start)
            mask = self._mask(tokens)
            kv = []
            for blk in self.blocks:
                x, k, v = blk(x, mask)
                kv.append((k, v))
            return (self.ln(x), kv) if return_kv else self.ln(x)

        def prefill(self, tokens, start: int = 0):
            """Decoding's first pass over (B, L) histories at positions ``start ..``: the
            state of the last position (B, D) and every layer's K/V.  The last block needs
            its attention output and feed-forward only at that position (later tokens attend
            to its K/V alone), so they are computed there only -- equal to ``forward`` at the
            last position."""
            x = self.embed(tokens, start)
            mask = self._mask(tokens)
            kv = []
            for blk in self.blocks[:-1]:
                x, k, v = blk(x, mask)
                kv.append((k, v))
            last = self.blocks[-1]
            q, k, v = last._qkv(x)
            kv.append((k, v))
            a = F.scaled_dot_product_attention(q[:, :, -1:], k, v, attn_mask=mask[:, :, -1:])
            return self.ln(last._out(x[:, -1:], a))[:, 0], kv

        def logits(self, h):
            return h @ self.tok.weight.T

    return CausalSIDModule()


def _rerank(res, dense: np.ndarray, top: int):
    """``res`` (a BeamResult of k candidates per user) re-ordered by the (B, k) ``dense``
    scores (missing candidates -inf: they stay last), keeping the best ``top``; ``scores``
    become the dense scores."""
    from .beam import BeamResult

    order = np.argsort(-dense, axis=1, kind="stable")[:, :top]
    rows = np.arange(len(order))[:, None]
    return BeamResult(res.items[rows, order], dense[rows, order].astype(res.scores.dtype), res.sids[rows, order])


@register
class CausalSID(SIDRecommender):
    """Decoder-only generative recommender over flattened Semantic-ID streams.

    Parameters: ``hidden`` (128), ``n_layers`` (2), ``n_heads`` (4), ``max_len`` (50
    items of history), ``dropout`` (0.2), ``ffn`` (None = ``2 * hidden``), ``stride``
    (training-window stride; None = ``max_len``), ``attn_dropout`` (0.0: dropout on the
    attention weights; on a CPU it costs more than the rest of the layer, because it
    draws a mask over every (query, key) pair of the ~200-token streams), ``level_emb`` (True), ``beam`` (20:
    beam width of :meth:`recommend`; raised to ``k`` when smaller), ``codes`` (path of a
    saved ``Codes`` directory, used when ``fit`` gets no ``codes=``), ``id_only`` (False:
    the ID-only ablation, one token per item).

    The dense hybrid (LIGER-style; both off by default): ``dense`` (0.0) is the weight of a
    second loss beside the next-token one -- at the last token of each history item the
    model also predicts the next item as a whole, a full softmax over the catalogue whose
    item vectors are the sums of the items' SID-token embeddings (no per-item table: a new
    item has a vector as soon as it has a SID); ``rerank`` (0) re-ranks that many
    beam-search candidates by this dense score (a fixed candidate budget; the beam is
    widened to it when narrower), and the list returned is the top ``k`` of them;
    ``rerank="all"`` ranks the whole catalogue by the dense score, with no beam search
    (a full-ranking model whose item vectors are built from SIDs: an item added after
    training competes with the others as soon as it has a SID).

    ``dense_ids`` (False): the dense item vector of each item of the training catalogue
    also has a learned vector of its own (an ID embedding, zero at the start, so training starts
    from the SID-token sums), as in an ID model; an item added after training has none and
    competes by its SID-token sum alone.  Needs ``dense > 0``.

    ``uniform_last`` (False): decode the last level -- with a tokenizer's disambiguation
    level, the token that only tells apart items sharing their semantic tokens -- as
    uniform over the node's children (:func:`beam_search`), so that items added after
    training (:func:`sidkit.models.catalogue.add_items`), whose disambiguation token was
    never a training target, are not handicapped by it.

    ``precision`` ("fp32"): the decoding's arithmetic. ``"bf16"`` runs the beam search (and
    ``rerank`` scoring) under bfloat16 autocast -- matrix products in bf16, log-softmax and
    beam scores in float32 -- which is faster where the hardware multiplies bf16 natively
    (a GPU, a CPU with AVX512-BF16 or AMX) and changes near-tied beam lists; training is
    unaffected (``[train] precision`` sets that).
    """

    name = "causal_sid"
    title = "causal SID"

    def __init__(self, hidden: int = 128, n_layers: int = 2, n_heads: int = 4, max_len: int = 50,
                 dropout: float = 0.2, ffn: int | None = None, stride: int | None = None,
                 level_emb: bool = True, beam: int = 20, codes: str | None = None, id_only: bool = False,
                 attn_dropout: float = 0.0, dense: float = 0.0, rerank: int = 0,
                 uniform_last: bool = False, precision: str = "fp32", dense_ids: bool = False) -> None:
        self.hidden = hidden
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.max_len = max_len
        self.dropout = dropout
        self.ffn = ffn
        self.stride = stride
        self.level_emb = level_emb
        self.beam = beam
        self.codes = codes
        self.id_only = id_only
        self.attn_dropout = attn_dropout
        self.dense = dense
        self.rerank = rerank
        self.uniform_last = uniform_last
        self.precision = precision
        self.dense_ids = dense_ids

    #: parameters added after models were saved: left out of checkpoint fingerprints while
    #: they hold these defaults, so earlier runs stay resumable
    later_defaults = {"dense": 0.0, "rerank": 0, "uniform_last": False, "precision": "fp32", "dense_ids": False}

    # ------------------------------------------------------------------ fitting
    def _validate_params(self) -> None:
        self._check_transformer_params(("hidden", "n_layers", "n_heads", "max_len", "beam"),
                                       "hidden=128, n_heads=4")
        if not 0 <= self.attn_dropout < 1:
            raise ConfigError(f"attn_dropout must lie in [0, 1), got {self.attn_dropout}", "use e.g. 0.0")
        if isinstance(self.dense, bool) or not isinstance(self.dense, (int, float)) or not self.dense >= 0:
            raise ConfigError(f"dense must be a weight >= 0, got {self.dense!r}",
                              "use 0 (off) or e.g. 0.5 (the dense next-item loss beside the next-token loss)")
        if self.rerank != "all" and (isinstance(self.rerank, bool) or not isinstance(self.rerank, (int, np.integer))
                                     or self.rerank < 0):
            raise ConfigError(f"rerank must be a whole number >= 0 or \"all\", got {self.rerank!r}",
                              "use 0 (no re-ranking), a candidate budget such as 20, or \"all\" (dense ranking "
                              "of the whole catalogue)")
        if self.uniform_last and self.id_only:
            raise ConfigError("uniform_last=True would make every item equally likely: the ID-only model's "
                              "one level is its last", "set uniform_last=False for id_only=True")
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}",
                              "use precision=\"fp32\" (exact) or \"bf16\" (faster decoding on bf16 hardware)")
        if self.rerank and not self.dense:
            raise ConfigError(f"rerank={self.rerank} re-ranks by the dense score, which dense=0 does not train",
                              "set dense > 0 (e.g. dense=0.5), or rerank=0")
        if self.dense_ids and not self.dense:
            raise ConfigError("dense_ids=True adds per-item vectors to the dense score, which dense=0 does not train",
                              "set dense > 0 (e.g. dense=0.5), or dense_ids=False")
        if self.dense_ids and self.id_only:
            raise ConfigError("dense_ids=True would give the ID-only model a second vector per item: its one "
                              "token per item is already an ID embedding", "set dense_ids=False for id_only=True")

    def _resolve_tokens(self, data, codes) -> SIDTokens:
        from ..types import Codes

        if self.id_only:
            if codes is not None or self.codes is not None:
                raise ConfigError("id_only=True uses one token per item and takes no codes",
                                  "drop the codes, or set id_only=False")
            n = data.n_items
            return SIDTokens(Codes(np.arange(n, dtype=np.int64)[:, None], (max(n, 2),),
                                   item_ids=np.asarray(data.item_ids)))
        tokens = self._sid_tokens(data, codes)
        if self.uniform_last and tokens.codes.collision_rule == "none":
            raise ConfigError("uniform_last=True ignores the model's last level, but these codes' last level is "
                              "semantic (collision_rule 'none')",
                              "use codes with a disambiguation level (collision_rule 'extra_level' or "
                              "'by_construction'), or uniform_last=False")
        return tokens

    @property
    def n_positions(self) -> int:
        return (self.max_len + 1) * self.tokens_.n_levels - 1

    def build_module(self, n_items: int):
        from torch import nn

        t = self._checked_tokens(n_items)
        module = _build_module(t.vocab_size, t.n_levels, self.hidden, self.n_layers, self.n_heads,
                               self.n_positions, self.dropout, self.ffn or 2 * self.hidden, self.level_emb,
                               self.attn_dropout)
        if self.dense:
            module.dense_proj = nn.Linear(self.hidden, self.hidden)   # state -> next-item query
        if self.dense_ids:
            # one vector per trained item (a model saved after add_items keeps the trained count)
            module.dense_id = nn.Embedding(getattr(self, "n_id_rows_", n_items), self.hidden)
            nn.init.zeros_(module.dense_id.weight)
        return module

    def _set_state(self, state) -> None:
        if "dense_id.weight" not in state:
            return super()._set_state(state)
        self.n_id_rows_ = int(np.shape(state["dense_id.weight"])[0])   # build_module's row count
        try:
            super()._set_state(state)
        finally:
            del self.n_id_rows_

    def item_vectors(self, module=None):
        """(N, hidden) dense item vectors: each item's SID-token embeddings summed (the
        padding token's row is zero, so a shorter SID sums fewer tokens), plus, with
        ``dense_ids``, the item's own vector (items added after training have none)."""
        import torch

        module = module if module is not None else self.module_
        tok = torch.as_tensor(self.tokens_.item_tokens, device=module.tok.weight.device)
        vec = module.tok.weight[tok].sum(1)
        if not self.dense_ids:
            return vec
        ids = module.dense_id.weight
        return torch.cat([vec[:len(ids)] + ids, vec[len(ids):]])

    def dense_scores(self, state, items=None, module=None):
        """Dense next-item scores of (B, hidden) states: (B, N) over the catalogue, or
        (B, C) for (B, C) catalogue indices ``items`` (-1: no item, scored -inf)."""
        import torch

        module = module if module is not None else self.module_
        q = module.dense_proj(state)
        vec = self.item_vectors(module)
        if items is None:
            return q @ vec.T
        idx = torch.as_tensor(items, device=q.device)
        out = torch.einsum("bd,bcd->bc", q, vec[idx.clamp_min(0)])
        return out.masked_fill(idx < 0, float("-inf"))

    def _grid(self, items: np.ndarray) -> np.ndarray:
        """(B, H) history tokens (item + 1, 0 = pad) -> (B, H * W) SID token grid."""
        table = np.vstack([np.zeros((1, self.tokens_.n_levels), np.int64), self.tokens_.item_tokens])
        return table[items].reshape(items.shape[0], -1)

    def train_arrays(self, data) -> tuple[np.ndarray, ...]:
        inputs, targets = data.windows(self.max_len, self.stride)
        w = np.concatenate([inputs, targets[:, -1:]], 1)               # (n, max_len + 1) items
        grid = self._grid(w)
        W = self.tokens_.n_levels
        is_target = np.concatenate([np.zeros((len(w), 1), bool), targets != PAD], 1)   # per item
        y = grid[:, 1:].copy()
        y[~np.repeat(is_target, W, axis=1)[:, 1:] | (y == PAD)] = -100
        if not self.dense:
            return grid[:, :-1], y
        # the dense target: at the position that predicts an item's first token, the item
        yi = np.full(y.shape, -100, np.int64)
        pos = np.arange(1, w.shape[1]) * W - 1
        yi[:, pos] = np.where(is_target[:, 1:], w[:, 1:] - 1, -100)
        return grid[:, :-1], y, yi

    def train_loss(self, module, x, y, yi=None):
        import torch
        import torch.nn.functional as F

        L = x.shape[1]
        hs, ys, hd, yd = [], [], [], []
        for rows, w in self.length_groups(x, y >= 0):   # the real part of each window only
            xg, yg = (x, y) if rows is None else (x[rows], y[rows])
            h = module(xg[:, -w:], start=L - w)          # absolute positions as in the full grid
            keep = yg[:, -w:] >= 0
            hs.append(h[keep])
            ys.append(yg[:, -w:][keep])
            if yi is not None:
                ig = (yi if rows is None else yi[rows])[:, -w:]
                hd.append(h[ig >= 0])
                yd.append(ig[ig >= 0])
        h, t = (hs[0], ys[0]) if len(hs) == 1 else (torch.cat(hs), torch.cat(ys))
        loss = F.cross_entropy(module.logits(h), t)
        if yi is None:
            return loss
        hd, yd = (hd[0], yd[0]) if len(hd) == 1 else (torch.cat(hd), torch.cat(yd))
        return loss + float(self.dense) * F.cross_entropy(self.dense_scores(hd, module=module), yd)

    def train_loss_terms(self, x, y, *_):
        return (y >= 0).sum()

    # ------------------------------------------------------------------ decoding
    def _history_grid(self, history: np.ndarray) -> np.ndarray:
        h = history[:, -self.max_len:]
        if h.shape[1] < self.max_len:
            h = np.concatenate([np.zeros((h.shape[0], self.max_len - h.shape[1]), np.int64), h], 1)
        return self._grid(h)

    #: a group of histories costs one more beam search (its W steps: a few ms on a CPU),
    #: counted in prefill tokens (~8 us each); measured best between 300 and 1,500
    beam_group_overhead: float = 800.0

    def decode(self, history: np.ndarray, k: int, *, beam: int | None = None, constrained: bool = True,
               exclude=None):
        """:class:`~sidkit.models.beam.BeamResult` of the (B, H) histories (no checks);
        ``exclude``: (B, N) items each user must not get (see :func:`beam_search`).

        The histories are searched in groups of similar length (:meth:`length_groups`),
        each with its grid trimmed to its longest real history: the prefill and the
        decoded tokens' attention never touch padding, and every user's beam is the one
        of the padded grid (a user's search is independent of the other users')."""
        from .beam import by_groups

        grid = self._history_grid(history)
        B, T = grid.shape
        if self.rerank == "all":
            return self._dense_rank(grid, k, exclude)
        if self.rerank:
            k_out, k = k, int(min(max(k, self.rerank), self.n_items))   # the candidate budget
        beam = int(max(beam or self.beam, k))
        top = k_out if self.rerank else None
        groups = self.length_groups(grid, overhead=self.beam_group_overhead)
        return by_groups(groups, B, lambda rows, w, ex: self._beam(
            (grid if rows is None else grid[rows])[:, -w:], T, k, beam, constrained, ex, top), exclude)

    def _inference(self):
        """The decoding's context: no gradients, and bfloat16 autocast with ``precision="bf16"``
        (the training loop's autocast factory)."""
        import contextlib

        import torch

        from ..training.loop import _autocast

        stack = contextlib.ExitStack()
        stack.enter_context(torch.no_grad())
        stack.enter_context(_autocast(self.precision, self.device_, "[model] precision")())
        return stack

    def _dense_rank(self, grid: np.ndarray, k: int, exclude):
        """``rerank="all"``: the top ``k`` of the whole catalogue by the dense score (no
        beam search), each group of similar history length prefilled over its real part
        only; ``exclude``d items score -inf and come last."""
        import torch

        from .beam import BeamResult

        module, T = self.module_, grid.shape[1]
        items = np.empty((grid.shape[0], k), np.int64)
        scores = np.empty((grid.shape[0], k), np.float32)
        was = module.training
        module.eval()
        try:
            with self._inference():
                for rows, w in self.length_groups(grid, overhead=self.beam_group_overhead):
                    g = grid if rows is None else grid[rows]
                    state, _ = module.prefill(torch.as_tensor(g[:, -w:], device=self.device_), start=T - w)
                    s = self.dense_scores(state).float()
                    if exclude is not None:
                        ex = exclude if rows is None else exclude[rows]
                        s = s.masked_fill(torch.as_tensor(ex, device=s.device), float("-inf"))
                    top = torch.topk(s, k, dim=1)
                    sl = slice(None) if rows is None else rows
                    items[sl], scores[sl] = top.indices.cpu().numpy(), top.values.cpu().numpy()
        finally:
            module.train(was)
        items[~np.isfinite(scores)] = -1
        sids = np.where(items[..., None] >= 0, self.tokens_.item_tokens[np.maximum(items, 0)], PAD)
        return BeamResult(items, scores, sids)

    def _beam(self, grid: np.ndarray, T: int, k: int, beam: int, constrained: bool, exclude,
              top: int | None = None):
        """The beam search of (B, w) history grids, the last ``w`` columns of grids of
        ``T`` columns (positions ``T - w .. T - 1``; the decoded tokens follow at ``T ..``).
        ``top``: re-rank the ``k`` candidates by the dense score and keep the best ``top``."""
        import torch

        from .beam import beam_search

        module = self.module_
        grid = torch.as_tensor(grid, device=self.device_)
        B, w = grid.shape
        start = T - w
        last = {}

        def step(tokens, state):
            t = tokens.shape[1]
            if t == 0:
                x, kv = module.prefill(grid, start=start)
                last["state"] = x                          # the history's state: the dense query
                h = kv[0][0].shape[1]
                # per (user, head) layouts for bmm: K transposed (B h, dh, w), V (B h, w, dh)
                state["hist"] = [(k_.transpose(-1, -2).reshape(B * h, -1, w), v_.reshape(B * h, w, -1))
                                 for k_, v_ in kv]
                state["bias"] = torch.zeros((B, w), dtype=x.dtype, device=x.device).masked_fill(
                    grid == PAD, float("-inf"))[:, None, None, :]
                state["dec"] = [(kv_[0][:, :, :0], kv_[1][:, :, :0]) for kv_ in kv]
            else:
                x = module.embed(tokens[:, -1:], T + t - 1)
                dec = []
                for blk, (hk, hv), (dk, dv) in zip(module.blocks, state["hist"], state["dec"]):
                    x, dk, dv = blk.step(x, hk, hv, state["bias"], dk, dv)
                    dec.append((dk, dv))
                state["dec"] = dec
                x = module.ln(x)[:, 0]
            return torch.log_softmax(module.logits(x).float(), -1), state

        def reorder(state, parents):
            state["dec"] = [(dk[parents], dv[parents]) for dk, dv in state["dec"]]
            return state

        was = module.training
        module.eval()
        try:
            with self._inference():
                res = beam_search(step, {}, self.tokens_, B, beam=beam, k=k, reorder=reorder,
                                  constrained=constrained, device=self.device_, exclude=exclude,
                                  uniform_last=bool(self.uniform_last))
                if top is None:
                    return res
                return _rerank(res, self.dense_scores(last["state"], res.items).float().cpu().numpy(), top)
        finally:
            module.train(was)
