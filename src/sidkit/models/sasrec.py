"""SASRec (Kang & McAuley, 2018): causal self-attention over the item history.

Trained with cross-entropy over **all** items at every position of each training
window (one forward pass per window, not one sample per prefix); the output layer is
tied to the item embedding.  Windows hold ``max_len + 1`` items of a user's training
sequence (see :meth:`SequenceData.windows`), so every target sees up to ``max_len``
items of context, as at inference.

Padding is never computed: a batch (training windows, or histories to score) is split
into groups of similar real length, each trimmed to its longest real history
(:meth:`~sidkit.models.torch_base.TorchRecommender.length_groups`).  Positions are indexed
from the right (the last column is position ``max_len - 1``), padding is masked out of
attention and zeroed, so each real position computes what it computes in the padded
batch, up to float rounding; the training batches are the same ones.  Dropout masks are
drawn over the trimmed tensors, so a seed's random stream differs from an untrimmed run
(``trim_padding = False``).
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ArtifactError
from .torch_base import TorchRecommender
from .base import register


def _build_module(n_items: int, hidden: int, n_blocks: int, n_heads: int, max_len: int,
                  dropout: float, ffn: int):
    import torch
    import torch.nn.functional as F
    from torch import nn

    from .layers import dropout as dropout_layer

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(hidden, eps=1e-8)
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.proj = nn.Linear(hidden, hidden)
            self.ln2 = nn.LayerNorm(hidden, eps=1e-8)
            self.ff = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), dropout_layer(dropout),
                                    nn.Linear(ffn, hidden))
            self.drop = dropout_layer(dropout)

        def forward(self, x, mask):
            B, L, D = x.shape
            q, k, v = self.qkv(self.ln1(x)).view(B, L, 3, n_heads, D // n_heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=dropout if self.training else 0.0)
            x = x + self.drop(self.proj(a.transpose(1, 2).reshape(B, L, D)))
            return x + self.drop(self.ff(self.ln2(x)))

    class SASRecModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.item = nn.Embedding(n_items + 1, hidden, padding_idx=0)
            self.pos = nn.Embedding(max_len, hidden)
            self.drop = dropout_layer(dropout)
            self.blocks = nn.ModuleList(Block() for _ in range(n_blocks))
            self.ln = nn.LayerNorm(hidden, eps=1e-8)
            nn.init.normal_(self.item.weight, std=hidden ** -0.5)
            nn.init.normal_(self.pos.weight, std=hidden ** -0.5)
            with torch.no_grad():
                self.item.weight[0].zero_()

        def forward(self, tokens):
            """(B, L) left-padded tokens -> (B, L, hidden) states."""
            B, L = tokens.shape
            real = tokens != 0
            x = self.item(tokens) * math.sqrt(hidden) + self.pos.weight[-L:][None]
            x = self.drop(x) * real[..., None]
            causal = torch.ones(L, L, dtype=torch.bool, device=tokens.device).tril()
            # a position attends to earlier real items and always to itself (no empty rows)
            mask = (causal[None] & real[:, None, :]) | torch.eye(L, dtype=torch.bool, device=tokens.device)[None]
            mask = mask[:, None]
            for blk in self.blocks:
                x = blk(x, mask) * real[..., None]
            return self.ln(x)

        def logits(self, h):
            return h @ self.item.weight[1:].T

    return SASRecModule()


_FUSED = None


def _fused_softmax_ce():
    """The ``torch.autograd.Function`` of the mean cross-entropy of ``h @ w.T`` against
    ``targets``, for chunks of ``chunk`` targets at a time: ``apply(h, w, targets, chunk)``.

    Each chunk's (chunk x items) logits stay cache-sized: their log-softmax gives the loss,
    and ``softmax - onehot`` (computed in place) gives the chunk's gradients of ``h`` and
    ``w`` at once; backward only scales them by the incoming gradient.  The plain
    ``cross_entropy(h @ w.T)`` writes and re-reads the whole (targets x items) matrix in
    the matmul, the log-softmax, its backward and two more matmuls; on Beauty (~750
    targets x 12,101 items per batch) that made the logits most of an epoch."""
    global _FUSED
    if _FUSED is not None:
        return _FUSED
    import torch

    class FusedSoftmaxCE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, h, w, targets, chunk):
            n = h.shape[0]
            gh = torch.empty_like(h)
            gw = torch.zeros_like(w)
            total = h.new_zeros((), dtype=torch.float32)
            for lo in range(0, n, chunk):
                hc, tc = h[lo:lo + chunk], targets[lo:lo + chunk]
                ls = torch.log_softmax(hc @ w.T, 1)
                total -= ls.gather(1, tc[:, None]).sum()
                p = ls.exp_()                                  # softmax - onehot, in place
                p[torch.arange(len(tc), device=p.device), tc] -= 1
                gh[lo:lo + chunk] = p @ w
                gw.addmm_(p.T, hc)
            ctx.save_for_backward(gh, gw)
            ctx.n = n
            return total / n

        @staticmethod
        def backward(ctx, grad):
            gh, gw = ctx.saved_tensors
            g = grad / ctx.n
            return gh * g, gw * g, None, None

    _FUSED = FusedSoftmaxCE
    return _FUSED


@register
class SASRec(TorchRecommender):
    """Self-attentive sequential recommender.

    Parameters: ``hidden`` (64), ``n_blocks`` (2), ``n_heads`` (2), ``max_len`` (50),
    ``dropout`` (0.2), ``ffn`` (feed-forward width; None = ``hidden``, as in the
    paper), ``stride`` (window stride; None = ``max_len``).
    """

    name = "sasrec"
    #: on a CPU, the full-softmax loss computes its gradient chunk by chunk of targets in
    #: the forward pass (:func:`_fused_softmax_ce`: the same loss and gradients up to float
    #: rounding, ~2x faster than materialising the (targets x items) logits three times)
    fused_loss: bool = True

    def __init__(self, hidden: int = 64, n_blocks: int = 2, n_heads: int = 2, max_len: int = 50,
                 dropout: float = 0.2, ffn: int | None = None, stride: int | None = None) -> None:
        self.hidden = hidden
        self.n_blocks = n_blocks
        self.n_heads = n_heads
        self.max_len = max_len
        self.dropout = dropout
        self.ffn = ffn
        self.stride = stride

    def _validate_params(self) -> None:
        self._check_transformer_params(("hidden", "n_blocks", "n_heads", "max_len"), "hidden=64, n_heads=2")

    def build_module(self, n_items: int):
        self._validate_params()
        return _build_module(n_items, self.hidden, self.n_blocks, self.n_heads, self.max_len,
                             self.dropout, self.ffn or self.hidden)

    def train_arrays(self, data) -> tuple[np.ndarray, ...]:
        return data.windows(self.max_len, self.stride)

    def train_loss(self, module, inputs, targets):
        import torch
        import torch.nn.functional as F

        hs, ys = [], []
        for rows, w in self.length_groups(inputs, targets):   # the real part of each window only
            x, y = (inputs, targets) if rows is None else (inputs[rows], targets[rows])
            h = module(x[:, -w:])
            keep = y[:, -w:] != 0
            hs.append(h[keep])
            ys.append(y[:, -w:][keep])
        h, y = (hs[0], ys[0]) if len(hs) == 1 else (torch.cat(hs), torch.cat(ys))
        w = module.item.weight[1:]
        if (self.fused_loss and h.device.type == "cpu" and torch.is_grad_enabled() and h.requires_grad
                and not torch.is_autocast_enabled("cpu") and len(y)):
            return _fused_softmax_ce().apply(h, w, y - 1, max(8, min(256, (1 << 19) // w.shape[0])))
        return F.cross_entropy(module.logits(h), y - 1)

    def train_loss_terms(self, inputs, targets):
        return (targets != 0).sum()

    def score_tensor(self, module, history):
        history = history[:, -self.max_len:]
        groups = self.length_groups(history)
        if len(groups) == 1:
            last = module(history[:, -groups[0][1]:])[:, -1]
        else:
            last = None
            for rows, w in groups:
                h = module(history[rows][:, -w:])[:, -1]
                if last is None:
                    last = h.new_empty((history.shape[0], h.shape[1]))
                last[rows] = h
        return module.logits(last)

    def _check_module_state(self, state: dict) -> None:
        w = state.get("item.weight")
        if w is None or tuple(w.shape) != (self.n_items + 1, self.hidden):
            raise ArtifactError(
                f"the SASRec weights do not match the model parameters (item embedding "
                f"{None if w is None else tuple(w.shape)}, expected ({self.n_items + 1}, {self.hidden}))",
                "the weights belong to another config or catalogue; retrain")
