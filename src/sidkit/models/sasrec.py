"""SASRec (Kang & McAuley, 2018): causal self-attention over the item history.

Trained with cross-entropy over **all** items at every position of each training
window (one forward pass per window, not one sample per prefix); the output layer is
tied to the item embedding.  Windows hold ``max_len + 1`` items of a user's training
sequence (see :meth:`SequenceData.windows`), so every target sees up to ``max_len``
items of context, as at inference.
"""

from __future__ import annotations

import math

import numpy as np

from ..errors import ArtifactError
from .train import TorchRecommender
from .base import register


def _build_module(n_items: int, hidden: int, n_blocks: int, n_heads: int, max_len: int,
                  dropout: float, ffn: int):
    import torch
    from torch import nn
    import torch.nn.functional as F

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1 = nn.LayerNorm(hidden, eps=1e-8)
            self.qkv = nn.Linear(hidden, 3 * hidden)
            self.proj = nn.Linear(hidden, hidden)
            self.ln2 = nn.LayerNorm(hidden, eps=1e-8)
            self.ff = nn.Sequential(nn.Linear(hidden, ffn), nn.GELU(), nn.Dropout(dropout),
                                    nn.Linear(ffn, hidden))
            self.drop = nn.Dropout(dropout)

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
            self.drop = nn.Dropout(dropout)
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


@register
class SASRec(TorchRecommender):
    """Self-attentive sequential recommender.

    Parameters: ``hidden`` (64), ``n_blocks`` (2), ``n_heads`` (2), ``max_len`` (50),
    ``dropout`` (0.2), ``ffn`` (feed-forward width; None = ``hidden``, as in the
    paper), ``stride`` (window stride; None = ``max_len``).
    """

    name = "sasrec"

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
        import torch.nn.functional as F

        h = module(inputs)
        keep = targets != 0
        logits = module.logits(h[keep])
        return F.cross_entropy(logits, targets[keep] - 1)

    def train_loss_terms(self, inputs, targets):
        return (targets != 0).sum()

    def score_tensor(self, module, history):
        h = module(history[:, -self.max_len:])
        return module.logits(h[:, -1])

    def _check_module_state(self, state: dict) -> None:
        w = state.get("item.weight")
        if w is None or tuple(w.shape) != (self.n_items + 1, self.hidden):
            raise ArtifactError(
                f"the SASRec weights do not match the model parameters (item embedding "
                f"{None if w is None else tuple(w.shape)}, expected ({self.n_items + 1}, {self.hidden}))",
                "the weights belong to another config or catalogue; retrain")
