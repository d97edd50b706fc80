"""FAMAE: field-aware masked auto-encoding item embeddings (ReSID; docs/famae.md).

Every item has J fields (MovieLens: item id, genres, release-year bucket; Amazon, and
product tables such as the Beauty ``items.jsonl``: item id, brand/store, category levels
1-3).  A missing value (no brand, a path shorter than 3 levels) has its own code.  Each field has a learned table of ``dim``-d
vectors; a multi-valued field (genres) is the sum of its values' vectors.  A user's
training sequence, truncated to the last ``max_len`` items, is fed as

    x_t = sum_j f_j(item_t) + p_t

to a 2-layer bidirectional transformer.  Only the target (last) position is masked:
K ~ U{1..J} fields, a random subset of that size, are replaced by their field's
mask token.  The output h at the target position predicts every masked field j with
logits ``sqrt(dim) * cos(h, e)`` against field j's table: a full softmax for tables of
at most ``full_softmax_max`` values, else a sampled softmax with ``n_negatives``
uniform negatives shared by the batch (accidental hits removed).  A multi-valued
target averages the loss of each of its values.  The item embedding is the
concatenation of its J field vectors (each L2-normalised with ``normalize=True``,
the geometry the cosine loss trains).

Training uses only the given (training) interactions.  Each user's last training
item is held out as a validation target (its window never enters training); early
stopping watches the validation masked-field loss (full softmax, a fixed mask draw).
Formulas and figures: ``docs/famae.md``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError, NotFittedError

KINDS = ("categorical", "multi", "bucket")
EMPTY = -1  # an unused slot of a multi-valued field; code 0 = missing value


@dataclass(frozen=True)
class FieldSpec:
    """One item field: ``name`` (in the model and the output), the item-table
    ``column`` it is read from, and its ``kind``: "categorical" (one value),
    "multi" (a list of values, sum-pooled) or "bucket" (a number binned into
    ``width``-wide buckets, e.g. 5-year release-year buckets)."""

    name: str
    column: str
    kind: str = "categorical"
    width: float = 5

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"field {self.name!r} has unknown kind {self.kind!r}", f"use one of {KINDS}")
        if self.kind == "bucket" and not self.width > 0:
            raise ConfigError(f"field {self.name!r}: bucket width must be > 0, got {self.width!r}",
                              "use e.g. width = 5 (years)")


def movielens_fields(year_bucket: float = 5) -> list[FieldSpec]:
    return [FieldSpec("item_id", "item_id"), FieldSpec("genres", "genres", "multi"),
            FieldSpec("year", "year", "bucket", year_bucket)]


def amazon_fields() -> list[FieldSpec]:
    return [FieldSpec("item_id", "item_id")] + [FieldSpec(c, c) for c in ("brand", "cat1", "cat2", "cat3")]


def _table_df(items) -> pd.DataFrame:
    df = getattr(items, "df", items)
    if not isinstance(df, pd.DataFrame) or "item_id" not in df.columns:
        raise DataError("FAMAE needs an item table (ItemTable or DataFrame) with an item_id column",
                        "load the data set's items, e.g. sidkit.data.load_dataset(...).items")
    return df


def default_fields(items, year_bucket: float = 5, names: Sequence[str] | None = None) -> list[FieldSpec]:
    """The field specs of an item table: MovieLens-like tables (``genres`` + ``year``)
    get item id, genres, year bucket; Amazon-like ones (``brand``/``cat1``-``cat3``)
    item id, brand, cat1-3 (the path levels; without them a ``categories`` list as one
    multi-valued field, a set); any other table item id plus its categorical fields
    (list-valued ones as "multi").  ``names`` keeps only those fields, in that order;
    a name that is no default spec but a column of the table becomes a field of it
    (list-valued: "multi", numeric: "bucket", else "categorical")."""
    df = _table_df(items)
    cols = set(df.columns)
    if {"genres", "year"} <= cols:
        specs = movielens_fields(year_bucket)
    elif cols & {"brand", "cat1", "cat2", "cat3"}:
        specs = [s for s in amazon_fields() if s.column in cols]
        if not cols & {"cat1", "cat2", "cat3"} and "categories" in cols:
            # no category levels (cat1-3, which load_amazon and load_item_jsonl derive from
            # the path): the categories as a set, never silently no category field
            specs.append(_infer_spec(df, "categories", year_bucket))
    else:
        specs = [FieldSpec("item_id", "item_id")] + [_infer_spec(df, c, year_bucket)
                                                     for c in getattr(items, "categorical_fields", [])]
    if names is None:
        return specs
    by_name = {s.name: s for s in specs}
    out = []
    for n in names:
        if n in by_name:
            out.append(by_name[n])
        elif n in cols:
            out.append(_infer_spec(df, n, year_bucket))
        else:
            raise ConfigError(f"FAMAE field {n!r} is neither a default field ({sorted(by_name)}) nor a "
                              f"column of the item table ({sorted(cols)})",
                              "list fields from those names in [embed.famae] fields")
    if len(set(out)) != len(out):
        raise ConfigError(f"FAMAE fields {list(names)} name a field twice", "list each field once")
    return out


def _infer_spec(df: pd.DataFrame, col: str, width: float) -> FieldSpec:
    vals = df[col].dropna()
    if len(vals) and vals.map(lambda v: isinstance(v, (list, tuple, np.ndarray))).any():
        return FieldSpec(col, col, "multi")
    if pd.api.types.is_numeric_dtype(df[col]) and col != "item_id":
        return FieldSpec(col, col, "bucket", width)
    return FieldSpec(col, col)


@dataclass
class FieldTables:
    """Integer codes of every item's fields.

    ``codes[j]`` is an ``(N, M_j)`` int64 array: 0 = missing value, ``1 + v`` = the
    value ``vocabs[j][v]``, ``EMPTY`` (-1) = an unused slot of a multi-valued field
    (M_j = the largest number of values of one item; 1 for single-valued fields).
    """

    specs: list[FieldSpec]
    vocabs: list[list[str]]
    codes: list[np.ndarray]
    item_ids: np.ndarray

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.specs]

    @property
    def vocab_sizes(self) -> list[int]:
        return [len(v) for v in self.vocabs]


def _bucket_label(v: float, width: float) -> str:
    lo = math.floor(v / width) * width
    fmt = (lambda x: str(int(x))) if float(width).is_integer() else (lambda x: f"{x:g}")
    return f"{fmt(lo)}-{fmt(lo + width - (1 if float(width).is_integer() else 0))}"


def _numbers(col: pd.Series) -> np.ndarray:
    x = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    return x[np.isfinite(x)]


def _values(v: Any, spec: FieldSpec) -> list[str]:
    """The (string) values of one cell; [] when missing."""
    if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)):
        return []
    if spec.kind == "multi":
        seq = list(v) if isinstance(v, (list, tuple, np.ndarray)) else [v]
        return sorted({str(x) for x in seq if x is not None and str(x).strip()})
    if spec.kind == "bucket":
        try:
            x = float(v)
        except (TypeError, ValueError):
            return []
        return [] if not np.isfinite(x) else [_bucket_label(x, spec.width)]
    s = str(v).strip()
    return [s] if s else []


def build_field_tables(items, specs: Sequence[FieldSpec]) -> FieldTables:
    """Codes of ``specs`` for every row of ``items`` (an ItemTable or DataFrame)."""
    df = _table_df(items)
    if not specs:
        raise ConfigError("FAMAE needs at least one item field", "keep item_id among the fields")
    missing = [s.column for s in specs if s.column not in df.columns]
    if missing:
        raise DataError(f"item table has no column(s) {missing} for FAMAE fields; columns found: "
                        f"{list(df.columns)}", "choose fields among the table's columns")
    ids = df["item_id"].astype(str).to_numpy()
    vocabs, codes = [], []
    for s in specs:
        cells = [_values(v, s) for v in df[s.column].tolist()]
        if s.kind == "bucket":  # buckets in numeric order
            lows = {_bucket_label(x, s.width): math.floor(x / s.width) for x in _numbers(df[s.column])}
            vocab = sorted(lows, key=lows.get)
        else:
            vocab = sorted({x for c in cells for x in c})
        index = {x: i + 1 for i, x in enumerate(vocab)}
        m = max(1, max((len(c) for c in cells), default=1))
        arr = np.full((len(cells), m), EMPTY, dtype=np.int64)
        lens = np.array([len(c) for c in cells])
        arr[lens == 0, 0] = 0
        flat = np.array([index[x] for c in cells for x in c], dtype=np.int64)
        rows = np.repeat(np.arange(len(cells)), lens)
        slots = np.arange(len(flat)) - np.repeat(np.cumsum(lens) - lens, lens)
        arr[rows, slots] = flat
        vocabs.append(vocab)
        codes.append(arr)
    return FieldTables(list(specs), vocabs, codes, ids)


def draw_mask(n: int, n_fields: int, generator) -> Any:
    """``(n, J)`` bool: per row K ~ U{1..J}, then a uniformly random subset of K fields."""
    import torch

    k = torch.randint(1, n_fields + 1, (n,), generator=generator)
    rank = torch.rand(n, n_fields, generator=generator).argsort(1).argsort(1)
    return rank < k[:, None]


# ----------------------------------------------------------------------------- model
def _build_module(tables: FieldTables, dim, n_layers, n_heads, ffn, dropout, max_len):
    import torch
    from torch import nn

    class FAMAEModule(nn.Module):
        def __init__(self):
            super().__init__()
            self.tables = nn.ModuleList(nn.Embedding(v + 1, dim) for v in tables.vocab_sizes)  # row 0: missing
            for t in self.tables:
                nn.init.normal_(t.weight, std=0.02)
            self.mask_tokens = nn.Parameter(torch.randn(len(tables.specs), dim) * 0.02)
            self.pos = nn.Embedding(max_len, dim)
            nn.init.normal_(self.pos.weight, std=0.02)
            layer = nn.TransformerEncoderLayer(dim, n_heads, ffn, dropout, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, n_layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)
            self.drop = nn.Dropout(dropout)
            # item row 0 = padding (every slot EMPTY); catalogue row i -> i + 1
            for j, c in enumerate(tables.codes):
                pad = np.full((1, c.shape[1]), EMPTY, dtype=np.int64)
                self.register_buffer(f"codes{j}", torch.from_numpy(np.vstack([pad, c])), persistent=False)

        def field_vectors(self, items):
            """``(..., J, dim)``: each field's sum-pooled vector of ``items`` (catalogue
            rows + 1; 0 = padding, all zeros)."""
            out = []
            for j, table in enumerate(self.tables):
                c = getattr(self, f"codes{j}")[items]                     # (..., M_j)
                out.append((table(c.clamp(min=0)) * (c >= 0).unsqueeze(-1)).sum(-2))
            return torch.stack(out, -2)

        def forward(self, items, mask):
            """h at the last position of ``items`` (B, L) with ``mask`` (B, J) fields masked there."""
            f = self.field_vectors(items)                                  # (B, L, J, d)
            last = torch.where(mask.unsqueeze(-1), self.mask_tokens.expand_as(f[:, -1]), f[:, -1])
            x = torch.cat([f[:, :-1].sum(2), last.sum(1, keepdim=True)], 1)
            x = self.drop(x + self.pos.weight[-x.shape[1]:])
            pad = items == 0
            *first, last_layer = self.encoder.layers
            for layer in first:
                x = layer(x, src_key_padding_mask=pad)
            return self.norm(_last_query(last_layer, x, pad))

    return FAMAEModule()


def _last_query(layer, x, pad):
    """A pre-norm ``TransformerEncoderLayer`` evaluated at the last position only (the
    one output FAMAE uses): same result as ``layer(x)[:, -1]``, without the query,
    output-projection and feed-forward work of the other positions."""
    kv = layer.norm1(x)
    a = layer.self_attn(kv[:, -1:], kv, kv, key_padding_mask=pad, need_weights=False)[0]
    h = x[:, -1:] + layer.dropout1(a)
    f = layer.linear2(layer.dropout(layer.activation(layer.linear1(layer.norm2(h)))))
    return (h + layer.dropout2(f))[:, 0]


def _cos_logits(h, e, scale):
    import torch.nn.functional as F

    return scale * F.normalize(h, dim=-1) @ F.normalize(e, dim=-1).T


def field_losses(module, h, targets, mask, *, n_negatives: int, full_max: int, generator=None,
                 full: bool = False):
    """Per field j: ``(loss_sum, n_rows, n_correct)`` over the rows where field j is masked
    and has a value.  ``targets[j]`` are the target items' codes (B, M_j)."""
    import torch

    scale = math.sqrt(h.shape[-1])
    out = []
    for j, table in enumerate(module.tables):
        t = targets[j]
        valid = t > 0
        rows = mask[:, j] & valid.any(1)
        if not rows.any():
            out.append((h.new_zeros(()), 0, 0))
            continue
        hj, tj, vj = h[rows], t[rows] - 1, valid[rows]                    # value index 0..V-1
        e = table.weight[1:]
        V = e.shape[0]
        if full or V <= full_max:
            logp = _cos_logits(hj, e, scale).log_softmax(-1)
            nll = -logp.gather(1, tj.clamp(min=0))
            correct = (vj & (tj == logp.argmax(1, keepdim=True))).any(1)
        else:
            neg = torch.randint(0, V, (n_negatives,), generator=generator).to(h.device)
            pos = scale * (torch.nn.functional.normalize(hj, dim=-1).unsqueeze(1)
                           * torch.nn.functional.normalize(e[tj.clamp(min=0)], dim=-1)).sum(-1)  # (R, M)
            negl = _cos_logits(hj, e[neg], scale)                           # (R, S)
            hit = ((tj.unsqueeze(-1) == neg) & vj.unsqueeze(-1)).any(1)     # (R, S)
            negl = negl.masked_fill(hit, float("-inf"))
            both = torch.cat([pos.unsqueeze(-1), negl.unsqueeze(1).expand(-1, pos.shape[1], -1)], -1)
            lse = torch.logsumexp(both, -1)                                  # (R, M): positive + negatives
            nll = lse - pos
            correct = torch.zeros(len(hj), dtype=torch.bool, device=h.device)
        w = vj.float() / vj.sum(1, keepdim=True)
        out.append(((nll * w).sum(), int(rows.sum()), int(correct.sum())))
    return out


# ----------------------------------------------------------------------------- estimator
class FAMAE:
    """Field-aware masked auto-encoder (scikit-learn conventions: parameters stored
    as given, validated in :meth:`fit`; fitted attributes end in ``_``).

    ``fit(items, train)`` learns from ``train`` (a :class:`~sidkit.data.Split`, whose
    training role alone is used, or a DataFrame of training interactions with
    ``user_id``, ``item_id`` and ``position``/``timestamp``); :meth:`embeddings` returns
    the :class:`~sidkit.types.Embeddings` of every item of ``items`` in table order.
    """

    def __init__(self, fields: Sequence[str] | Sequence[FieldSpec] | None = None, year_bucket: float = 5,
                 dim: int = 128, n_layers: int = 2, n_heads: int = 4, ffn: int = 512,
                 dropout: float = 0.1, max_len: int = 20, n_negatives: int = 128,
                 full_softmax_max: int = 512, epochs: int = 20, patience: int = 3,
                 samples_per_epoch: int | None = 4096, lr: float = 2e-3,
                 weight_decay: float = 0.0, batch_size: int = 128, warmup_steps: int = 50,
                 clip: float | None = 1.0, normalize: bool = True, random_state: int = 0,
                 device: str = "auto", show_progress: bool | None = None):
        self.fields = fields
        self.year_bucket = year_bucket
        self.dim = dim
        self.n_layers = n_layers
        self.n_heads = n_heads
        self.ffn = ffn
        self.dropout = dropout
        self.max_len = max_len
        self.n_negatives = n_negatives
        self.full_softmax_max = full_softmax_max
        self.epochs = epochs
        self.patience = patience
        self.samples_per_epoch = samples_per_epoch
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.warmup_steps = warmup_steps
        self.clip = clip
        self.normalize = normalize
        self.random_state = random_state
        self.device = device
        self.show_progress = show_progress

    PARAMS = ("fields", "year_bucket", "dim", "n_layers", "n_heads", "ffn", "dropout", "max_len",
              "n_negatives", "full_softmax_max", "epochs", "patience", "samples_per_epoch", "lr", "weight_decay",
              "batch_size", "warmup_steps", "clip", "normalize", "random_state")

    def get_params(self) -> dict[str, Any]:
        p = {k: getattr(self, k) for k in self.PARAMS}
        if p["fields"] is not None:
            p["fields"] = [asdict(f) if isinstance(f, FieldSpec) else f for f in p["fields"]]
        return p

    def _check_params(self) -> None:
        for nm in ("dim", "n_layers", "n_heads", "ffn", "max_len", "n_negatives", "epochs", "patience",
                   "batch_size"):
            v = getattr(self, nm)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ConfigError(f"FAMAE {nm} must be an integer >= 1, got {v!r}", f"set {nm} to a positive integer")
        if self.dim % self.n_heads:
            raise ConfigError(f"FAMAE dim={self.dim} is not divisible by n_heads={self.n_heads}",
                              "pick n_heads dividing dim, e.g. dim = 128, n_heads = 4")
        v = self.samples_per_epoch
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1):
            raise ConfigError(f"FAMAE samples_per_epoch must be an integer >= 1 or None, got {v!r}",
                              "use e.g. 4096, or None for every training target once per epoch")
        if self.max_len < 2:
            raise ConfigError(f"FAMAE max_len must be >= 2 (history + target), got {self.max_len}", "use e.g. 50")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"FAMAE dropout must lie in [0, 1), got {self.dropout!r}", "use e.g. 0.1")
        if not self.lr > 0:
            raise ConfigError(f"FAMAE lr must be > 0, got {self.lr!r}", "use e.g. 1e-3")
        if not self.year_bucket > 0:
            raise ConfigError(f"FAMAE year_bucket must be > 0, got {self.year_bucket!r}", "use e.g. 5")

    def _specs(self, items) -> list[FieldSpec]:
        f = self.fields
        if f is not None and all(isinstance(x, FieldSpec) for x in f):
            return list(f)
        return default_fields(items, self.year_bucket, f)

    # ------------------------------------------------------------------ data
    def _sequences(self, train, item_ids: np.ndarray):
        """Flat catalogue rows (+1) of the training sequences and each user's start."""
        from ..utils import index_of

        df = getattr(train, "train", train)
        if not isinstance(df, pd.DataFrame) or not {"user_id", "item_id"} <= set(df.columns):
            raise DataError("FAMAE trains on a Split or a DataFrame with user_id and item_id columns",
                            "pass split (its training role is used) or split.train")
        order = [c for c in ("position", "timestamp") if c in df.columns][:1]
        df = df.sort_values(["user_id", *order], kind="stable")
        idx = index_of(df["item_id"].astype(str).to_numpy(), item_ids)
        keep = idx >= 0
        users = df["user_id"].astype(str).to_numpy()[keep]
        seq = idx[keep] + 1
        if len(seq) == 0:
            raise DataError("no training interaction names an item of the item table",
                            "check that the item table and the interactions share item ids")
        new = np.r_[True, users[1:] != users[:-1]]
        start_of_user = np.flatnonzero(new)
        lengths = np.diff(np.r_[start_of_user, len(seq)])
        start = np.repeat(start_of_user, lengths)
        pos = np.arange(len(seq)) - start
        last = np.r_[new[1:], True]
        is_valid = last & (lengths[np.cumsum(new) - 1] >= 3)   # each user's last item, when >= 3
        is_train = (pos >= 1) & ~is_valid
        return seq, start, np.flatnonzero(is_train), np.flatnonzero(is_valid)

    def _windows(self, seq_t, start_t, g):
        import torch

        L = self.max_len
        idx = g[:, None] + torch.arange(-L + 1, 1, device=g.device)
        ok = idx >= start_t[g][:, None]
        return torch.where(ok, seq_t[idx.clamp(min=0)], torch.zeros((), dtype=seq_t.dtype, device=g.device))

    # ------------------------------------------------------------------ fit
    def fit(self, items, train) -> "FAMAE":
        import torch

        from ..utils import progress, resolve_device

        self._check_params()
        specs = self._specs(items)
        tables = build_field_tables(items, specs)
        self.field_tables_ = tables
        self.device_ = dev = resolve_device(self.device)
        seq, start, tr, va = self._sequences(train, tables.item_ids)
        if len(tr) == 0:
            raise DataError("FAMAE found no training targets (every user has fewer than 2 training items)",
                            "use a data set with longer user histories")
        seed = int(self.random_state)
        torch.manual_seed(seed)
        module = _build_module(tables, self.dim, self.n_layers, self.n_heads, self.ffn, self.dropout,
                               self.max_len).to(dev)
        self.module_ = module
        seq_t, start_t = torch.as_tensor(seq, device=dev), torch.as_tensor(start, device=dev)
        codes = [getattr(module, f"codes{j}") for j in range(len(specs))]
        J = len(specs)
        g_shuffle = torch.Generator().manual_seed(seed + 1)
        g_mask = torch.Generator().manual_seed(seed + 2)
        g_neg = torch.Generator().manual_seed(seed + 3)
        val_mask = draw_mask(len(va), J, torch.Generator().manual_seed(seed + 4)).to(dev)
        va_t = torch.as_tensor(va, device=dev)
        opt = torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        kw = dict(n_negatives=self.n_negatives, full_max=self.full_softmax_max)
        step, best, best_epoch, bad, history, best_state = 0, math.inf, 0, 0, [], None
        bar = progress(range(self.epochs), desc="famae", total=self.epochs, enabled=self.show_progress)
        t_start = time.perf_counter()
        per_epoch = min(self.samples_per_epoch or len(tr), len(tr))
        order, cursor = np.empty(0, np.int64), 0
        for epoch in bar:
            module.train()
            t0 = time.perf_counter()
            # the next per_epoch targets of a running shuffle: every training target once
            # before any repeats
            if cursor + per_epoch > len(order):
                order = np.r_[order[cursor:], tr[torch.randperm(len(tr), generator=g_shuffle).numpy()]]
                cursor = 0
            perm = torch.as_tensor(order[cursor:cursor + per_epoch], device=dev)
            cursor += per_epoch
            tot, cnt = 0.0, 0
            for lo in range(0, len(perm), self.batch_size):
                g = perm[lo:lo + self.batch_size]
                win = self._windows(seq_t, start_t, g)
                mask = draw_mask(len(g), J, g_mask).to(dev)
                lr = self.lr * min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else self.lr
                for pg in opt.param_groups:
                    pg["lr"] = lr
                h = module(win, mask)
                parts = field_losses(module, h, [c[win[:, -1]] for c in codes], mask, generator=g_neg, **kw)
                n = sum(p[1] for p in parts)
                loss = sum(p[0] for p in parts) / max(n, 1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.clip:
                    torch.nn.utils.clip_grad_norm_(module.parameters(), self.clip)
                opt.step()
                step += 1
                tot += float(loss.detach()) * n
                cnt += n
            rec: dict[str, Any] = {"epoch": epoch + 1, "loss": tot / max(cnt, 1), "lr": lr,
                                   "seconds": time.perf_counter() - t0}
            if not np.isfinite(rec["loss"]):
                raise DataError(f"the FAMAE training loss became {rec['loss']} at epoch {epoch + 1}",
                                "lower [embed.famae] lr or keep clip set")
            if len(va):
                rec["valid"] = self._evaluate(va_t, val_mask, seq_t, start_t, codes)
                if rec["valid"]["loss"] < best:
                    best, best_epoch, bad = rec["valid"]["loss"], epoch + 1, 0
                    best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                else:
                    bad += 1
            else:
                best_epoch = epoch + 1
            history.append(rec)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(loss=f"{rec['loss']:.3f}",
                                **({"valid": f"{rec['valid']['loss']:.3f}"} if "valid" in rec else {}))
            if len(va) and bad >= self.patience:
                break
        if hasattr(bar, "close"):
            bar.close()
        if best_state is not None:
            module.load_state_dict(best_state)
        module.eval()
        self.history_ = history
        self.best_epoch_ = best_epoch
        self.best_valid_ = None if best_state is None else history[best_epoch - 1]["valid"]
        self.train_seconds_ = time.perf_counter() - t_start
        self.n_train_targets_ = int(len(tr))
        self.n_valid_targets_ = int(len(va))
        return self

    def _evaluate(self, va_t, val_mask, seq_t, start_t, codes) -> dict[str, Any]:
        """Full-softmax masked-field loss and top-1 accuracy per field on the held-out targets."""
        import torch

        module = self.module_
        module.eval()
        names = self.field_tables_.names
        sums = np.zeros(len(names)), np.zeros(len(names)), np.zeros(len(names))
        with torch.no_grad():
            for lo in range(0, len(va_t), 1024):
                g = va_t[lo:lo + 1024]
                win = self._windows(seq_t, start_t, g)
                m = val_mask[lo:lo + 1024]
                parts = field_losses(module, module(win, m), [c[win[:, -1]] for c in codes], m,
                                     n_negatives=self.n_negatives, full_max=self.full_softmax_max, full=True)
                for j, (ls, n, k) in enumerate(parts):
                    sums[0][j] += float(ls)
                    sums[1][j] += n
                    sums[2][j] += k
        module.train()
        loss = float(sums[0].sum() / max(sums[1].sum(), 1))
        return {"loss": loss,
                "field_loss": {nm: float(sums[0][j] / sums[1][j]) if sums[1][j] else None
                               for j, nm in enumerate(names)},
                "field_accuracy": {nm: float(sums[2][j] / sums[1][j]) if sums[1][j] else None
                                   for j, nm in enumerate(names)}}

    # ------------------------------------------------------------------ output
    def _check_fitted(self) -> None:
        if not hasattr(self, "module_"):
            raise NotFittedError("this FAMAE is not fitted yet", "call fit(items, train) first")

    def item_vectors(self) -> np.ndarray:
        """``(N, J * dim)`` float32: the concatenated field vectors of every item."""
        import torch

        self._check_fitted()
        n = len(self.field_tables_.item_ids)
        with torch.no_grad():
            f = self.module_.field_vectors(torch.arange(1, n + 1, device=self.device_))  # (N, J, d)
            if self.normalize:
                f = torch.nn.functional.normalize(f, dim=-1)
        return np.ascontiguousarray(f.reshape(n, -1).cpu().numpy(), dtype=np.float32)

    def embeddings(self):
        """The :class:`~sidkit.types.Embeddings` of every item (item-table order)."""
        from ..types import Embeddings

        self._check_fitted()
        t = self.field_tables_
        meta = {"fields": [asdict(s) for s in t.specs], "vocab_sizes": t.vocab_sizes,
                "dims": [self.dim] * len(t.specs), "params": self.get_params(),
                "epochs": len(self.history_), "best_epoch": self.best_epoch_,
                "losses": [r["loss"] for r in self.history_],
                "valid_losses": [r["valid"]["loss"] for r in self.history_ if "valid" in r],
                "best_valid": self.best_valid_, "train_seconds": self.train_seconds_,
                "n_train_targets": self.n_train_targets_, "n_valid_targets": self.n_valid_targets_}
        return Embeddings(self.item_vectors(), t.item_ids, source="famae", meta=meta)


def famae_from_config(cfg, *, seed: int = 0, device: str = "auto", show_progress: bool | None = None) -> FAMAE:
    """A :class:`FAMAE` from an ``[embed.famae]`` table (:class:`sidkit.config.FamaeConfig`)."""
    return FAMAE(**cfg.model_dump(), random_state=seed, device=device, show_progress=show_progress)
