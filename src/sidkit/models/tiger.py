"""TIGER: a T5 encoder-decoder that generates the Semantic ID of the next item.

The network is ``transformers``' :class:`T5ForConditionalGeneration` built from a
:class:`T5Config` with random initialisation (no pretrained weights, nothing is
downloaded): ``n_layers`` encoder and ``n_layers`` decoder blocks, ``d_model`` 128,
``n_heads`` 6 heads of ``d_kv`` 64 (T5 allows ``n_heads * d_kv != d_model``), a ReLU
feed-forward of ``d_ff`` 1024, dropout 0.1, relative position buckets, the tied
vocabulary of :class:`SIDTokens` (the TIGER recipe).

- **Encoder input**: the user's hashed bucket token (``user_tokens=True``: 2,000
  buckets of a stable hash of the user id, :func:`user_bucket`) followed by the SID
  tokens of the last ``max_len`` items (:meth:`SIDTokens.history_tokens`), left-padded;
  ``PAD`` slots are masked out by the attention mask.
- **Decoder**: ``BOS`` (the decoder start token), then the target item's ``W`` SID
  tokens; the loss is the cross-entropy on the target's SID tokens (``PAD`` slots of
  short variable-length SIDs ignored).
- **Training samples**: every ``(user, target position)`` of the training sequences
  (the target's history: the ``max_len`` items before it).  Training on all of them
  costs ~100 TFLOP per MovieLens-100K epoch, so each epoch draws ``targets_per_user``
  of each user's samples (:meth:`TIGER.epoch_indices`): each user's samples are put in
  a fixed random order per pass and consecutive blocks of ``targets_per_user`` are
  taken epoch after epoch, so every sample is seen once every
  ``ceil(n_user / targets_per_user)`` epochs.  ``targets_per_user=0`` uses all.
- **Decoding** (:meth:`TIGER.decode`): the trie-constrained :func:`beam_search`.  The
  encoder runs once per user, and each decoder layer's cross-attention keys and
  values are computed once per user too (``B`` rows, reached per beam by broadcasting
  the beams of a user, never copied per beam); each step feeds the one new token of
  every beam through the decoder blocks with a per-beam self-attention K/V cache
  that ``reorder`` index-selects.  The step uses the T5 module's own weights and
  relative position bias, so it equals the teacher-forced forward pass (tested).

``recommend(history, k, users=None)``: without ``users`` a model trained with user
tokens decodes with the user slot left out (masked), which is not what it was trained
on; :func:`sidkit.eval.evaluate` passes the users of the split.
"""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError, DataError
from ..utils import mix64
from .base import register
from .generative import SIDRecommender
from .sid_tokens import BOS, EOS, PAD, TIGER_USER_BUCKETS

# the tied T5 embedding appears under these names as well as ``t5.shared.weight``
_TIED_ALIASES = ("t5.encoder.embed_tokens.weight", "t5.decoder.embed_tokens.weight", "t5.lm_head.weight")


def _build_module(vocab: int, d_model: int, d_kv: int, d_ff: int, n_layers: int, n_heads: int, dropout: float):
    import torch
    from torch import nn
    from transformers import T5Config, T5ForConditionalGeneration
    from transformers.utils import logging as hf_logging

    cfg = T5Config(vocab_size=vocab, d_model=d_model, d_kv=d_kv, d_ff=d_ff, num_layers=n_layers,
                   num_decoder_layers=n_layers, num_heads=n_heads, dropout_rate=dropout,
                   feed_forward_proj="relu", pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=BOS,
                   bos_token_id=BOS, use_cache=False)

    class TigerModule(nn.Module):
        """The T5 (``self.t5``); its state dict holds the tied embedding once."""

        def __init__(self):
            super().__init__()
            verbosity = hf_logging.get_verbosity()
            hf_logging.set_verbosity_error()
            try:
                self.t5 = T5ForConditionalGeneration(cfg)
            finally:
                hf_logging.set_verbosity(verbosity)

        def state_dict(self, *args, **kwargs):
            sd = super().state_dict(*args, **kwargs)
            prefix = kwargs.get("prefix", "")
            for k in _TIED_ALIASES:
                sd.pop(prefix + k, None)
            return sd

        def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
            res = super().load_state_dict(state_dict, strict=False, assign=assign)
            missing = [k for k in res.missing_keys if k not in _TIED_ALIASES]
            if strict and (missing or res.unexpected_keys):
                raise RuntimeError(f"missing keys {missing[:5]}, unexpected keys {res.unexpected_keys[:5]}")
            return res

        def forward(self, enc, labels):
            """Mean cross-entropy of the (B, W) target SID tokens (-100: ignored)."""
            return self.t5(input_ids=enc, attention_mask=_enc_mask(enc), labels=labels).loss

        def log_probs(self, enc, dec_in):
            """Teacher forcing: (B, L, V) log-probs of each next token after ``dec_in`` (BOS first)."""
            out = self.t5(input_ids=enc, attention_mask=_enc_mask(enc), decoder_input_ids=dec_in)
            return torch.log_softmax(out.logits.float(), -1)

    return TigerModule()


def _enc_mask(enc):
    """Attention mask of left-padded encoder inputs (a row without any token keeps its last slot)."""
    mask = enc != PAD
    mask[:, -1] |= ~mask.any(1)
    return mask.long()


class _Decoder:
    """KV-cached greedy/beam decoding steps of a T5 for :func:`beam_search` (see the module doc)."""

    def __init__(self, t5, enc, enc_mask):
        import torch

        self.t5 = t5
        c = t5.config
        self.nh, self.dk = c.num_heads, c.d_kv
        self.scale_out = c.d_model ** -0.5 if getattr(c, "scale_decoder_outputs", True) else 1.0
        h = t5.encoder(input_ids=enc, attention_mask=enc_mask).last_hidden_state       # (B, T, D)
        B, T, _ = h.shape
        self.B = B
        self.cross = []                    # per decoder block: K (B h, dk, T), V (B h, T, dk)
        for blk in t5.decoder.block:
            att = blk.layer[1].EncDecAttention
            k = att.k(h).view(B, T, self.nh, self.dk).permute(0, 2, 3, 1)                      # (B, h, dk, T)
            v = att.v(h).view(B, T, self.nh, self.dk).transpose(1, 2)                          # (B, h, T, dk)
            self.cross.append((k.reshape(B * self.nh, self.dk, T), v.reshape(B * self.nh, T, self.dk)))
        self.enc_bias = torch.zeros((B, T), dtype=h.dtype, device=h.device).masked_fill(
            enc_mask == 0, float("-inf"))[:, None, None, :]                                   # (B, 1, 1, T)

    def step(self, tokens, state):
        import torch

        t5, nh, dk = self.t5, self.nh, self.dk
        R, t = tokens.shape
        J = R // self.B
        last = tokens[:, -1:] if t else torch.full((R, 1), BOS, dtype=torch.long, device=self.enc_bias.device)
        x = t5.decoder.embed_tokens(last)                                                      # (R, 1, D)
        sa0 = t5.decoder.block[0].layer[0].SelfAttention
        pos_bias = sa0.compute_bias(1, t + 1, device=x.device, past_seen_tokens=t)             # (1, h, 1, t+1)
        cache = state.get("self") or [None] * len(t5.decoder.block)
        new_cache = []
        for blk, (hk, hv), kv in zip(t5.decoder.block, self.cross, cache):
            sa = blk.layer[0]
            y = sa.layer_norm(x)
            q = sa.SelfAttention.q(y).view(R, 1, nh, dk).transpose(1, 2)                       # (R, h, 1, dk)
            k = sa.SelfAttention.k(y).view(R, 1, nh, dk).transpose(1, 2)
            v = sa.SelfAttention.v(y).view(R, 1, nh, dk).transpose(1, 2)
            if kv is not None:
                k, v = torch.cat([kv[0], k], 2), torch.cat([kv[1], v], 2)
            new_cache.append((k, v))
            p = torch.softmax(q @ k.transpose(-1, -2) + pos_bias, -1)                          # T5: no 1/sqrt(d)
            x = x + sa.SelfAttention.o((p @ v).transpose(1, 2).reshape(R, 1, nh * dk))
            ca = blk.layer[1]
            y = ca.layer_norm(x)
            qb = ca.EncDecAttention.q(y).view(self.B, J, nh, dk).transpose(1, 2).reshape(-1, J, dk)  # (B h, J, dk)
            s = torch.bmm(qb, hk).view(self.B, nh, J, -1) + self.enc_bias                     # (B, h, J, T)
            a = torch.bmm(torch.softmax(s, -1).view(self.B * nh, J, -1), hv)                   # hk/hv never copied
            a = a.view(self.B, nh, J, dk).transpose(1, 2).reshape(R, 1, nh * dk)
            x = x + ca.EncDecAttention.o(a)
            x = blk.layer[2](x)
        x = t5.decoder.final_layer_norm(x)[:, 0] * self.scale_out
        state["self"] = new_cache
        return torch.log_softmax(t5.lm_head(x).float(), -1), state

    @staticmethod
    def reorder(state, parents):
        state["self"] = [(k.index_select(0, parents), v.index_select(0, parents)) for k, v in state["self"]]
        return state


@register
class TIGER(SIDRecommender):
    """TIGER generative recommender: T5 encoder-decoder over Semantic IDs (module doc).

    Parameters: ``d_model`` (128), ``n_layers`` (4 encoder + 4 decoder blocks),
    ``n_heads`` (6), ``d_kv`` (64 per head), ``d_ff`` (1024), ``dropout`` (0.1),
    ``max_len`` (20 items of history), ``user_tokens`` (True: a hashed user-bucket
    token starts the encoder input), ``targets_per_user`` (8 training targets per user
    per epoch; 0 = all), ``beam`` (20: beam width of :meth:`recommend`; raised to
    ``k`` when smaller), ``codes`` (a run's codes directory or a saved ``Codes`` stem,
    used when ``fit`` gets no ``codes=``).
    """

    name = "tiger"
    title = "TIGER"
    uses_user_ids = True          # evaluate() passes the users to recommend()
    id_only = False

    @property
    def user_buckets(self) -> int:
        return TIGER_USER_BUCKETS if self.user_tokens else 0

    def __init__(self, d_model: int = 128, n_layers: int = 4, n_heads: int = 6, d_kv: int = 64,
                 d_ff: int = 1024, dropout: float = 0.1, max_len: int = 20, user_tokens: bool = True,
                 targets_per_user: int = 8, beam: int = 20, codes: str | None = None) -> None:
        self.d_model = d_model
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.d_kv = d_kv
        self.d_ff = d_ff
        self.dropout = dropout
        self.max_len = max_len
        self.user_tokens = user_tokens
        self.targets_per_user = targets_per_user
        self.beam = beam
        self.codes = codes

    # ------------------------------------------------------------------ fitting
    def _validate_params(self) -> None:
        for nm in ("d_model", "n_layers", "n_heads", "d_kv", "d_ff", "max_len", "beam"):
            v = getattr(self, nm)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"{nm} must be an integer >= 1, got {v!r}", f"set {nm} to a positive integer")
        tpu = self.targets_per_user
        if isinstance(tpu, bool) or not isinstance(tpu, (int, np.integer)) or tpu < 0:
            raise ConfigError(f"targets_per_user must be an integer >= 0 (0: every target), got {tpu!r}",
                              "use e.g. targets_per_user = 8, or 0 to train on every target every epoch")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ConfigError(f"dropout must lie in [0, 1), got {self.dropout!r}", "use e.g. 0.1")
        if not isinstance(self.user_tokens, (bool, np.bool_)):
            raise ConfigError(f"user_tokens must be true or false, got {self.user_tokens!r}",
                              "use user_tokens = true (TIGER) or false")

    def build_module(self, n_items: int):
        t = self._checked_tokens(n_items)
        return _build_module(t.vocab_size, self.d_model, self.d_kv, self.d_ff, self.n_layers, self.n_heads,
                             float(self.dropout))

    def encoder_tokens(self, history: np.ndarray, users=None) -> np.ndarray:
        """(B, 1 + max_len * W) encoder inputs of (B, H) left-padded history tokens
        (the last ``max_len`` items; the user token first when ``users`` is given)."""
        h = np.asarray(history, np.int64)[:, -self.max_len:]
        use = users if (self.user_tokens and users is not None) else None
        return self.tokens_.history_tokens(h, max_len=1 + self.max_len * self.tokens_.n_levels, users=use)

    def train_arrays(self, data) -> tuple[np.ndarray, ...]:
        """One row per (user, target position >= 1) of the training sequences, user-major:
        encoder tokens (n, 1 + max_len * W) and target SID labels (n, W) (-100 = ignored)."""
        from ..eval.sequences import pad_left

        flat, lengths = data.train_sequences()
        n_rows = np.maximum(lengths - 1, 0)
        if n_rows.sum() == 0:
            raise DataError("no user has two or more training interactions, so there is nothing to train on",
                            "use a data set with longer histories (k-core filtering, e.g. user_core = 5)")
        user = np.repeat(np.arange(len(lengths)), n_rows)
        t = np.arange(n_rows.sum()) - np.repeat(np.cumsum(n_rows) - n_rows, n_rows) + 1      # target position
        start = np.r_[0, np.cumsum(lengths)[:-1]][user]
        L = self.max_len
        cnt = np.minimum(t, L)
        idx = np.repeat(start + t - cnt, cnt) + (np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt))
        hist = pad_left((flat[idx], cnt), L)
        enc = self.encoder_tokens(hist, np.asarray(data.users)[user] if self.user_tokens else None)
        y = self.tokens_.sid_tokens(flat[start + t] - 1).copy()
        y[y == PAD] = -100
        self._rows_per_user = n_rows[n_rows > 0].astype(np.int64)
        return enc, y

    def train_loss(self, module, enc, y):
        """Mean cross-entropy of the batch's target tokens, the encoder run on groups of
        similar input length trimmed to their real part (:meth:`length_groups`; exact: T5's
        positions are relative and the padding is masked), each group's mean weighted by
        its number of target tokens."""
        groups = self.length_groups(enc)
        if len(groups) == 1:
            return module(enc[:, -groups[0][1]:], y)
        total, loss = (y != -100).sum(), 0.0
        for rows, w in groups:
            yg = y[rows]
            n = (yg != -100).sum()
            if int(n):
                loss = loss + module(enc[rows][:, -w:], yg) * n
        return loss / total.clamp_min(1)

    def train_loss_terms(self, enc, y):
        return (y != -100).sum()

    def epoch_indices(self, n: int, generator, epoch: int = 0):
        """The training rows of epoch ``epoch`` (0-based), shuffled with ``generator``.

        Rows are user-major (:meth:`train_arrays`).  Each user's rows are ordered by a
        hash of (seed, pass, row) -- a fixed random order per pass over the user's
        rows -- and epoch ``e`` takes the block ``e mod P`` of ``targets_per_user``
        rows (``P = ceil(n_user / targets_per_user)`` epochs per pass; the last block of
        a pass wraps around), so every row is used once per pass.  Deterministic per
        seed; resume is exact (the shuffle uses the checkpointed generator).
        """
        import torch

        k = self.targets_per_user
        counts = getattr(self, "_rows_per_user", None)
        if not k or counts is None or int(counts.sum()) != n:
            return torch.randperm(n, generator=generator)
        U = len(counts)
        user = np.repeat(np.arange(U), counts)
        P = -(-counts // k)
        pas = (epoch // P)[user].astype(np.uint64)
        seed = np.uint64(int(getattr(self, "seed_", 0) or 0) & 0xFFFFFFFF)
        key = mix64(mix64(np.arange(n, dtype=np.uint64) ^ (seed << np.uint64(32))) ^ mix64(pas + np.uint64(1)))
        order = np.lexsort((key, user))                            # user-major, random within a user
        start = np.r_[0, np.cumsum(counts)[:-1]]
        take = np.minimum(counts, k)
        block = (epoch % P) * k
        j = np.arange(take.sum()) - np.repeat(np.cumsum(take) - take, take)
        u = np.repeat(np.arange(U), take)
        rows = order[start[u] + (block[u] + j) % counts[u]]
        rows = torch.as_tensor(rows, dtype=torch.long)
        return rows[torch.randperm(len(rows), generator=generator)]

    # ------------------------------------------------------------------ decoding
    #: a group of histories costs one more beam search (see CausalSID.beam_group_overhead)
    beam_group_overhead: float = 800.0

    def decode(self, history: np.ndarray, k: int, *, users=None, beam: int | None = None,
               constrained: bool = True, exclude=None):
        """:class:`~sidkit.models.beam.BeamResult` of the (B, H) histories (no checks);
        ``exclude``: (B, N) items each user must not get (see :func:`beam_search`).

        The encoder inputs are searched in groups of similar length (:meth:`length_groups`),
        each trimmed to its longest real input: T5's attention has relative positions only
        and masks the padding, so a user's beam is the one of the padded input."""
        import torch

        from .beam import beam_search, by_groups

        module = self.module_
        enc = self.encoder_tokens(history, users)
        beam = int(max(beam or self.beam, k))

        def search(rows, w, ex):
            e = torch.as_tensor((enc if rows is None else enc[rows])[:, -w:], device=self.device_)
            dec = _Decoder(module.t5, e, _enc_mask(e))
            return beam_search(dec.step, {}, self.tokens_, e.shape[0], beam=beam, k=k, reorder=dec.reorder,
                               constrained=constrained, device=self.device_, exclude=ex)

        was = module.training
        module.eval()
        try:
            with torch.no_grad():
                return by_groups(self.length_groups(enc, overhead=self.beam_group_overhead), enc.shape[0],
                                 search, exclude)
        finally:
            module.train(was)
