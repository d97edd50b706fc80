"""The served model: any recommender of a ``sidkit run`` directory, loaded once.

:class:`ServedModel` reads a run directory (README "Run layout")::

    RUN/recommender/metrics.json                 which models were trained, their metrics
    RUN/recommender/models/<label>/seed-<s>/     the saved model (weights + its SIDs)
    RUN/codes/{codes.*, tokenizer/, summary.json} the catalogue's SIDs and the tokenizer
    RUN/embeddings/embeddings.json               how the items were embedded (text model)
    RUN/data/items.*, RUN/items/texts.json       titles and item texts
    RUN/diagnostics/meta.json                    the SID diagnostics headline

Which model: ``label``/``seed`` when given (any model of the run: the generative SID
models ``causal_sid`` and ``tiger`` answer by trie-constrained beam search, SASRec and
popularity by scoring every item), else the generative SID models of the run (not the
ID-only ablation) ranked causal SID first, then by mean validation NDCG@10; a run
without one serves its model with the best mean validation NDCG@10.  Of the model's
seeds: the best validation NDCG@10 (lowest seed on a tie).

Everything that touches the model runs in one thread (the batcher's worker); the rest
(lookups, the tokenizer's ``encode``) only reads state that never changes after loading.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import numpy as np

from ..errors import ArtifactError, ConfigError, DataError
from ..io import read_json
from ..utils import index_of

SID_MODEL_TYPES = ("causal_sid", "tiger")


def _tail(add, n: int):
    """The items of catalogue version ``add`` after its first ``n``."""
    import dataclasses

    return dataclasses.replace(add, item_ids=add.item_ids[n:], codes=add.codes[n:], lengths=add.lengths[n:],
                               embeddings=add.embeddings[n:], texts=add.texts[n:])


class RecRequest(NamedTuple):
    """One /recommend request as the batched function sees it."""

    history: np.ndarray      # (H,) int64 catalogue indices, oldest first
    k: int
    beam: int
    user: str | None = None
    mask_seen: bool = False  # leave the history's items out of the answer
    view: Any = None         # the CatalogueView the history's indices refer to (None: the current one)


class RecResult(NamedTuple):
    items: np.ndarray        # (n,) int64 catalogue indices, best first (n <= k)
    scores: np.ndarray       # (n,) float32: summed log-probabilities (SID models), the model's scores (others)


def _valid_ndcg(rec: dict[str, Any]) -> float:
    v = (rec.get("valid") or {}).get("ndcg@10")
    return float(v) if v is not None else float("-inf")


def choose_model(doc: dict[str, Any], label: str | None = None, seed: int | None = None) -> tuple[str, dict]:
    """``(label, record)`` of the model to serve from a ``metrics.json`` document."""
    labels = list(doc.get("labels") or [])
    models = doc.get("models") or {}
    kinds = {lb: (models.get(lb) or {}).get("model") or {} for lb in labels}
    sid = [lb for lb in labels if kinds[lb].get("type") in SID_MODEL_TYPES and not kinds[lb].get("id_only")]
    listed = ", ".join(f"{lb} ({kinds[lb].get('type', '?')}{', id_only' if kinds[lb].get('id_only') else ''})"
                       for lb in labels) or "none"
    if label is not None:
        if label not in labels:
            raise ConfigError(f"the run has no model labelled {label!r}; its models: {listed}",
                              f"pass --model with one of: {', '.join(labels) or '(none: train one)'}")
    else:
        if not labels:
            raise ConfigError("the run lists no trained model to serve",
                              "train one, e.g. sidkit run --out RUN (the default run trains popularity, SASRec "
                              "and a causal SID model)")
        summary = doc.get("summary") or {}

        def mean_valid(lb):
            v = ((summary.get(lb) or {}).get("valid") or {}).get("ndcg@10") or {}
            return v.get("mean", float("-inf"))

        if sid:
            label = max(sid, key=lambda lb: (kinds[lb].get("type") == "causal_sid", mean_valid(lb), -sid.index(lb)))
        else:                                   # no SID model: the run's best model
            label = max(labels, key=lambda lb: (mean_valid(lb), -labels.index(lb)))
    recs = [r for r in doc.get("records") or [] if r.get("label") == label]
    if not recs:
        raise ArtifactError(f"metrics.json lists model {label!r} but holds no record of it",
                            "retrain the run's recommenders (sidkit run --force)")
    if seed is not None:
        mine = [r for r in recs if r.get("seed") == seed]
        if not mine:
            raise ConfigError(f"model {label!r} was trained with seeds {[r.get('seed') for r in recs]}, not {seed}",
                              "pass --seed with one of them (or leave it out: the best validation seed)")
        return label, mine[0]
    return label, max(recs, key=lambda r: (_valid_ndcg(r), -int(r.get("seed", 0))))


def format_sid(tokens: Sequence[int]) -> str:
    return "-".join(str(int(t)) for t in tokens)


def format_sids(codes: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """:func:`format_sid` of every row (its first ``lengths`` tokens): an object array of str."""
    out = np.empty(len(lengths), dtype=object)
    out[:] = ["-".join(map(str, row[:n])) for row, n in zip(np.asarray(codes).tolist(), np.asarray(lengths).tolist())]
    return out


def parse_sid(text: str) -> list[int]:
    """``"12-3-7-0"`` -> ``[12, 3, 7, 0]``; a DataError naming the text otherwise."""
    parts = text.split("-")
    if not text or not all(p.isascii() and p.isdigit() and len(p) <= 9 for p in parts):
        raise DataError(f"SID {text[:60]!r} is not dash-separated non-negative integers",
                        "write it like 12-3-7-0 (the tokens of each level)")
    return [int(p) for p in parts]


class CatalogueView:
    """An immutable snapshot of what the served catalogue is: the model and everything
    indexed by its catalogue (ids, SIDs, titles) plus the tokenizer and the run's codes.
    ``POST /items`` builds a new view and swaps the one reference
    (:attr:`ServedModel.view`); a request takes the view once and uses only it, so it sees
    the old or the new catalogue, never a mixture."""

    def __init__(self, model, codes, titles, tokenizer=None, run_codes=None, previous=None,
                 encoding=None) -> None:
        self.model = model
        self.item_ids = np.asarray(model.item_ids_, dtype=str)
        self._order = np.argsort(self.item_ids, kind="stable")
        self._sorted = self.item_ids[self._order]
        self.n_items = len(self.item_ids)
        self.codes = codes
        if codes is not None:
            self.sid_strings = self._sid_strings(codes, previous)
        else:
            self.sid_strings = np.full(self.n_items, None, dtype=object)
        self.titles = titles
        # ``encoding``: a zero-argument callable giving (tokenizer, run_codes), called on the
        # first use (after an update, the first /encode or POST /items: loading the tokenizer
        # is ~10-20 ms that the update itself need not spend)
        self._tokenizer, self._run_codes, self._encoding = tokenizer, run_codes, encoding
        self._encoding_lock = threading.Lock()

    def _loaded(self) -> tuple[Any, Any]:
        if self._encoding is not None:
            with self._encoding_lock:
                if self._encoding is not None:
                    self._tokenizer, self._run_codes = self._encoding()
                    self._encoding = None
        return self._tokenizer, self._run_codes

    @property
    def tokenizer(self):
        """The run's tokenizer with this catalogue's added items (None when unavailable)."""
        return self._loaded()[0]

    @property
    def run_codes(self):
        """The run's codes plus this catalogue's added items' (None when unavailable)."""
        return self._loaded()[1]

    def _sid_strings(self, codes, previous) -> np.ndarray:
        """Every item's SID as text; after an update (``previous``: the view it replaces) only
        the added items' are formatted, when the earlier items kept their rows and SIDs."""
        n = previous.n_items if previous is not None and previous.codes is not None else 0
        if not (n and n <= self.n_items and np.array_equal(previous.item_ids, self.item_ids[:n])
                and previous.codes.codes.shape[1] == codes.codes.shape[1]
                and np.array_equal(previous.codes.codes, codes.codes[:n])
                and np.array_equal(previous.codes.lengths, codes.lengths[:n])):
            n = 0
        tail = format_sids(codes.codes[n:], codes.lengths[n:])
        return np.concatenate([previous.sid_strings[:n], tail]) if n else tail

    def index_of(self, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Catalogue indices of ``ids`` and the ids that are not in the catalogue (exact
        matches: numpy's string arrays drop trailing NULs, so every hit is compared again
        as a Python string)."""
        ids = [str(i) for i in ids]
        pos = index_of(ids, self._sorted, presorted=True)
        return self._order[np.maximum(pos, 0)], [i for i, p in zip(ids, pos.tolist()) if p < 0]

    def title(self, i: int) -> str | None:
        return None if self.titles is None or self.titles[i] is None else str(self.titles[i])

    def item_of_sid(self, tokens: Sequence[int]) -> int:
        """Catalogue index of the item holding this SID, or -1."""
        if self.codes is None:
            return -1
        W = self.codes.n_levels
        if not 1 <= len(tokens) <= W:
            return -1
        sizes = self.codes.codebook_sizes
        if any(t >= sizes[lv] for lv, t in enumerate(tokens)):
            return -1
        row = np.full((1, W), -1, np.int64)
        row[0, :len(tokens)] = tokens
        return int(self.codes.lookup(row, np.array([len(tokens)]))[0])


def _view_property(name: str):
    return property(lambda self: getattr(self.view, name), doc=f"``view.{name}`` (the current catalogue)")


class ServedModel:
    """A run's recommender with its catalogue, SIDs, tokenizer and model card.

    Parameters: ``run_dir``; ``label`` and ``seed`` (default: see the module docstring);
    ``device`` ("auto": CUDA when present).
    """

    def __init__(self, run_dir: str | Path, label: str | None = None, seed: int | None = None,
                 device: str = "auto") -> None:
        from ..models import Recommender
        from ..models.generative import SIDRecommender
        from ..utils import resolve_device

        self.run_dir = run = Path(run_dir)
        if not run.is_dir():
            raise ArtifactError(f"run directory {run} does not exist",
                                "pass a directory written by sidkit run (or sidkit train)")
        mpath = run / "recommender" / "metrics.json"
        if not mpath.is_file():
            raise ArtifactError(f"{run} holds no trained recommenders ({mpath} is missing)",
                                f"train them first: sidkit run --out {run}")
        self.metrics = read_json(mpath)
        self.label, self.record = choose_model(self.metrics, label, seed)
        self.seed = int(self.record.get("seed", 0))
        mdir = run / "recommender" / "models" / self.label / f"seed-{self.seed}"
        from ..catalogue import apply_additions, current_additions

        self.additions = current_additions(run)            # items added with sidkit add-items / POST /items
        model = Recommender.load(mdir)
        self.generative = isinstance(model, SIDRecommender)     # beam search over SIDs; else scores every item
        self.device = resolve_device(device)
        if hasattr(model, "module_"):                            # torch models (popularity has no module)
            model = model.to(self.device)
            model.module_.eval()
        self.takes_new_items = (self.generative and not getattr(model, "id_only", False)
                                and self.record.get("tokenizer") is not None)
        self._base_model = model                                  # without the added items (refresh)
        if self.takes_new_items:
            model = apply_additions(model, self.additions)
        self.view = CatalogueView(model, None, None)
        self.max_len = int(getattr(model, "max_len", 0) or 0)          # popularity: none (reads no history)
        self.uses_user_ids = bool(getattr(model, "uses_user_ids", False))
        tokenizer, run_codes = self._load_tokenizer()
        self.view = CatalogueView(model, None, None, tokenizer, run_codes)
        # the SIDs shown per item: a SID model's own (what it decodes), else the run's codes
        codes = model.tokens_.codes if self.generative else self._run_codes_in_model_order()
        self.view = CatalogueView(model, codes, self._titles(), tokenizer, run_codes)
        self._update_lock = threading.Lock()
        train_cfg = ((self.metrics.get("models") or {}).get(self.label) or {}).get("train") or {}
        self.mask_seen_default = bool(train_cfg.get("mask_seen", (self.metrics.get("protocol") or {})
                                                    .get("mask_seen", False)))
        self._embedder = None
        self._embed_lock = threading.Lock()
        self.text_model_off = False                      # the server's --text-model off

    model = _view_property("model")
    item_ids = _view_property("item_ids")
    n_items = _view_property("n_items")
    codes = _view_property("codes")
    sid_strings = _view_property("sid_strings")
    titles = _view_property("titles")
    tokenizer = _view_property("tokenizer")
    run_codes = _view_property("run_codes")
    _order = _view_property("_order")
    _sorted = _view_property("_sorted")

    # ------------------------------------------------------------------ loading
    def _titles(self, item_ids: np.ndarray | None = None) -> np.ndarray | None:
        """A display title per catalogue item (``item_ids``, default the current view's): the
        item table's ``title``, else its text; an added item's text."""
        item_ids = self.item_ids if item_ids is None else item_ids
        run = self.run_dir
        ids = vals = None
        try:
            if (run / "data" / "items.json").is_file():
                from ..data import ItemTable

                items = ItemTable.load(run / "data")
                col = "title" if "title" in items.df.columns else None
                if col is not None:
                    ids, vals = items.df["item_id"].astype(str).to_numpy(), items.df[col].astype(str).to_numpy()
            if ids is None and (run / "items" / "texts.json").is_file():
                t = read_json(run / "items" / "texts.json")
                ids, vals = np.asarray(t["item_ids"], dtype=str), np.asarray(t["texts"], dtype=str)
        except (ArtifactError, DataError, KeyError, OSError):
            return None
        add = self.additions
        if add is not None:
            t = np.asarray([None if x is None else str(x) for x in add.texts], dtype=object)
            ids = np.concatenate([ids if ids is not None else np.zeros(0, str), np.asarray(add.item_ids, dtype=str)])
            vals = np.concatenate([vals.astype(object) if vals is not None else np.zeros(0, object), t])
        if ids is None:
            return None
        rows = index_of(item_ids, ids)
        return np.where(rows >= 0, vals[np.maximum(rows, 0)], None)

    def _load_tokenizer(self, additions=None):
        """``(tokenizer, run_codes)`` of the run (for /encode; for a SID model only when it
        decodes the run's own SIDs): the tokenizer of ``additions`` (default: the served ones;
        with the added items in its catalogue) and the run's codes plus the added items'
        (None, None when unavailable)."""
        from ..catalogue import run_tokenizer
        from ..types import Codes

        additions = self.additions if additions is None else additions

        self.embedding_dim = self.embed_source = None
        self.embed_meta: dict[str, Any] = {}
        self.encode_unavailable = None
        codes_dir = self.run_dir / "codes"
        if self.generative and self.record.get("tokenizer") is None:
            self.encode_unavailable = (f"model {self.label!r} was trained on SIDs from outside this run, so the "
                                       "run's tokenizer does not give its SIDs")
            return None, None
        if not (codes_dir / "tokenizer").exists():
            self.encode_unavailable = f"the run has no tokenizer ({codes_dir / 'tokenizer'} is missing)"
            return None, None
        try:
            tokenizer = run_tokenizer(self.run_dir, additions) if additions is not None \
                else run_tokenizer(self.run_dir, None)
            run_codes = self._with_additions(Codes.load(codes_dir / "codes"), additions)
        except (ArtifactError, DataError, OSError) as e:
            self.encode_unavailable = f"the run's tokenizer could not be loaded from {codes_dir}: {e}"
            return None, None
        emb = {}
        if (self.run_dir / "embeddings" / "embeddings.json").is_file():
            emb = read_json(self.run_dir / "embeddings" / "embeddings.json")
        d = getattr(tokenizer, "n_features_in_", None)
        if d is None and hasattr(tokenizer, "_dim"):
            d = tokenizer._dim()
        self.embedding_dim = int(d) if d is not None else emb.get("dim")
        self.embed_source = emb.get("source")
        self.embed_meta = emb.get("meta") or {}
        return tokenizer, run_codes

    @staticmethod
    def _with_additions(codes, additions):
        """The run's Codes followed by the added items' tokenizer SIDs."""
        if additions is None or codes.item_ids is None or additions.codes.shape[1] != codes.n_levels:
            return codes
        sizes = tuple(max(int(k), int(additions.codes[:, lv].max(initial=0)) + 1)
                      for lv, k in enumerate(codes.codebook_sizes))
        return codes.replace(codes=np.vstack([codes.codes, additions.codes]),
                             lengths=np.concatenate([codes.lengths, additions.lengths]),
                             codebook_sizes=sizes,
                             item_ids=np.concatenate([np.asarray(codes.item_ids).astype(str),
                                                      np.asarray(additions.item_ids, dtype=str)]))

    def _run_codes_in_model_order(self):
        """The run's Codes with rows in the served model's catalogue order (None when the run
        has none, or they miss a catalogue item)."""
        cat = self.run_codes
        if cat is None or cat.item_ids is None:
            return None
        rows = index_of(self.item_ids, cat.item_ids)
        if (rows < 0).any():
            return None
        return cat.replace(codes=cat.codes[rows], lengths=cat.lengths[rows], item_ids=self.item_ids)

    @property
    def text_encoding(self) -> bool:
        """Whether text /encode works: the run has text embeddings and text is not switched off."""
        return self.tokenizer is not None and self.embed_source == "text" and not self.text_model_off

    def text_template(self) -> str | None:
        """The template the run wrote its item texts with (None when unknown)."""
        if not hasattr(self, "_template"):
            self._template = None
            try:
                meta = read_json(self.run_dir / "items" / "meta.json")
                self._template = (meta.get("params") or {}).get("template")
                if self._template is None and (self.run_dir / "data" / "items.json").is_file():
                    from ..data import ItemTable
                    from ..data.text import default_template

                    self._template = default_template(ItemTable.load(self.run_dir / "data"))
            except (ArtifactError, DataError, OSError):
                pass
        return self._template

    # ------------------------------------------------------------------ lookups
    def index_of(self, ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """Catalogue indices of ``ids`` in the current view (see :meth:`CatalogueView.index_of`)."""
        return self.view.index_of(ids)

    def title(self, i: int) -> str | None:
        return self.view.title(i)

    def item_of_sid(self, tokens: Sequence[int]) -> int:
        """Catalogue index of the item holding this SID, or -1."""
        return self.view.item_of_sid(tokens)

    # ---------------------------------------------------------------- inference
    def recommend_batch(self, reqs: Sequence[RecRequest]) -> list[RecResult]:
        """Answer a batch of requests: SID models with one beam search per (catalogue view,
        beam width, user-token use, mask_seen), the others with one scoring of every item.
        Each request is answered with the view its history indices were looked up in."""
        import torch

        out: list[RecResult | None] = [None] * len(reqs)
        by_view: dict[int, tuple[CatalogueView, list[int]]] = {}
        current = self.view
        for i, r in enumerate(reqs):
            v = r.view if r.view is not None else current
            by_view.setdefault(id(v), (v, []))[1].append(i)
        with torch.inference_mode():
            for v, rows in by_view.values():
                for i, res in zip(rows, self._recommend_batch(v, [reqs[i] for i in rows])):
                    out[i] = res
        return out

    def _exclude(self, view: CatalogueView, reqs: Sequence[RecRequest]) -> np.ndarray:
        """(B, N) boolean mask: each masked request's history items (all of them)."""
        ex = np.zeros((len(reqs), view.n_items), bool)
        for j, r in enumerate(reqs):
            if r.mask_seen:
                ex[j, r.history] = True
        return ex

    def _padded(self, view: CatalogueView, reqs: Sequence[RecRequest]) -> np.ndarray:
        """Left-padded (B, H) history tokens (catalogue index + 1; each request's last
        ``max_len`` items)."""
        n = self.max_len or (1 if view.model.name == "popularity" else 0)     # popularity reads none
        hs = [r.history[-n:] if n else r.history for r in reqs]
        H = max(len(h) for h in hs)
        h = np.zeros((len(reqs), H), np.int64)
        for j, hist in enumerate(hs):
            h[j, H - len(hist):] = hist + 1
        return h

    def _recommend_batch(self, view: CatalogueView, reqs: Sequence[RecRequest]) -> list[RecResult]:
        if not self.generative:
            return self._score_batch(view, reqs)
        out: list[RecResult | None] = [None] * len(reqs)
        groups: dict[tuple[int, bool, bool], list[int]] = {}
        for i, r in enumerate(reqs):
            groups.setdefault((r.beam, self.uses_user_ids and r.user is not None, r.mask_seen), []).append(i)
        for (beam, with_users, masked), rows in groups.items():
            sub = [reqs[i] for i in rows]
            h = self._padded(view, sub)
            k = min(max(r.k for r in sub), view.n_items)
            kw: dict[str, Any] = {"users": np.asarray([r.user for r in sub], dtype=str)} if with_users else {}
            ex = self._exclude(view, sub) if masked else None
            if ex is not None:
                kw["exclude"] = ex
            res = view.model.decode(h, k, beam=max(beam, k), **kw)
            for j, (i, r) in enumerate(zip(rows, sub)):
                items, scores = res.items[j, :r.k], res.scores[j, :r.k]
                keep = (items >= 0) & np.isfinite(scores)
                if ex is not None:
                    keep &= ~ex[j, np.maximum(items, 0)]
                out[i] = RecResult(items[keep], scores[keep])
        return out

    def _score_batch(self, view: CatalogueView, reqs: Sequence[RecRequest]) -> list[RecResult]:
        """Models that score every item (SASRec, popularity): one ``scores`` call for the
        batch, the top-k of each row as ``Recommender.recommend`` ranks them (ties: lower
        catalogue index; masked items never returned)."""
        import torch

        from ..eval.metrics import topk_from_scores

        s = view.model.scores(self._padded(view, reqs))
        k = min(max(r.k for r in reqs), view.n_items)
        ex = self._exclude(view, reqs) if any(r.mask_seen for r in reqs) else None
        top = topk_from_scores(s, k, exclude=ex)
        vals = torch.gather(s.float(), 1, torch.as_tensor(top, device=s.device)).cpu().numpy()
        out = []
        for j, r in enumerate(reqs):
            items, scores = top[j, :r.k], vals[j, :r.k]
            keep = np.isfinite(scores)
            if r.mask_seen:
                keep &= ~ex[j, items]
            out.append(RecResult(items[keep], scores[keep]))
        return out

    def encode(self, vector: np.ndarray) -> tuple[list[int], str | None]:
        """SID tokens of one embedding (the tokenizer's ``encode``: a catalogue item gets its
        own SID, a new item a disambiguation number no catalogue item holds) and the id
        of the catalogue item it was recognised as (None for a new item)."""
        view = self.view                                        # one snapshot: tokenizer and codes together
        codes = view.tokenizer.encode(np.asarray(vector, np.float32)[None, :])
        n = int(codes.lengths[0])
        tokens = [int(t) for t in codes.codes[0, :n]]
        cat = view.run_codes
        if cat.n_levels != codes.n_levels or any(t >= k for t, k in zip(tokens, cat.codebook_sizes)):
            return tokens, None                                 # beyond the catalogue's codebooks: new
        row = np.asarray(codes.codes[:1], np.int64)
        hit = int(cat.lookup(row, codes.lengths[:1])[0])
        return tokens, (str(cat.item_ids[hit]) if hit >= 0 and cat.item_ids is not None else None)

    # ------------------------------------------------------------ new items
    def add_items(self, item_ids: Sequence[str], *, texts: Sequence[str] | None = None,
                  embeddings: Any = None, max_items: int | None = None) -> dict[str, Any]:
        """``POST /items``: encode new items with the run's tokenizer (``encode_new``), persist
        them atomically in ``RUN/catalogue`` (:func:`sidkit.catalogue.add_items_to_run`) and
        swap in a new :class:`CatalogueView` whose model has them in its trie.  One update at
        a time; requests keep the view they started with.  A DataError (nothing changed) on
        bad input; a ConfigError when the served model cannot take new items."""
        from ..catalogue import add_items_to_run, check_texts
        from ..models.catalogue import check_new_ids

        if not self.takes_new_items:
            why = ("it scores a fixed set of learned item embeddings" if not self.generative else
                   "its SIDs are not the run's tokenizer's" if self.record.get("tokenizer") is None else
                   "the ID-only ablation names items by index")
            raise ConfigError(f"model {self.label!r} ({self.view.model.name}) cannot take new items without "
                              f"retraining: {why}", "serve the run's causal SID or TIGER model (--model)")
        with self._update_lock:
            view = self.view
            ids = check_new_ids(item_ids, view.item_ids, **({"max_items": max_items} if max_items else {}))
            if embeddings is None and texts is not None:
                texts = check_texts(texts, len(ids))
                if not self.text_encoding:
                    raise DataError("this server cannot embed text (the run's items were not embedded from text, "
                                    "or the text model is off)",
                                    f"send 'embedding': each item's vector of {self.embedding_dim} floats")
                with self._embed_lock:
                    embeddings = self._text_embedder().embed(list(texts))
            summary, models, tok, after = add_items_to_run(
                self.run_dir, ids, embeddings=embeddings, texts=texts, max_items=max_items,
                models={(self.label, self.seed): view.model}, return_state=True)
            model = models[(self.label, self.seed)]
            self._prebuild(model)
            self.additions = after
            run_codes = self._with_additions(self._base_run_codes(), after)
            titles = self._titles(np.asarray(model.item_ids_, dtype=str))
            self.view = CatalogueView(model, model.tokens_.codes, titles, tok, run_codes,
                                      previous=view)                                     # the one swap
        return {"added": summary["added"], "version": summary["version"], "n_items": self.view.n_items,
                "items": [{"item_id": i, "sid": format_sid(sid), "tokens": sid}
                          for i, sid in summary["models"][f"{self.label}/seed-{self.seed}"].items()]}

    @property
    def catalogue_version(self) -> str | None:
        """The ``RUN/catalogue`` version the served catalogue holds (None: no items added)."""
        return self.additions.version if self.additions is not None else None

    def refresh(self) -> bool:
        """Take in the items another process added to the run (``sidkit add-items``, another
        server) since this catalogue's version: when ``RUN/catalogue/CURRENT`` names another
        version, rebuild the model from the saved one with that version's items (cumulative)
        and swap in the new view, as :meth:`add_items` does.  True when the catalogue changed.
        Cheap when nothing changed (one small file read); the server calls it every second."""
        from ..catalogue import apply_additions, catalogue_dir, current_additions

        if not self.takes_new_items:
            return False
        ptr = catalogue_dir(self.run_dir) / "CURRENT"
        try:
            name = ptr.read_text(encoding="utf-8").strip() if ptr.is_file() else None
        except OSError:
            return False
        if name == self.catalogue_version:
            return False
        with self._update_lock:
            after = current_additions(self.run_dir)             # read once: an immutable version
            if (after.version if after is not None else None) == self.catalogue_version:
                return False
            before = self.additions
            n = before.n_items if before is not None else 0
            if after is not None and n and after.item_ids[:n] == before.item_ids:
                # versions are cumulative: insert only the items added since (the same SIDs as a
                # rebuild from the saved model, which a restart does)
                tail = _tail(after, n)
                model = apply_additions(self.view.model, tail) if tail.n_items else self.view.model
            else:
                tail = None
                model = apply_additions(self._base_model, after)
            self._prebuild(model)
            self.additions = after
            ids = np.asarray(model.item_ids_, dtype=str)
            titles = self._tail_titles(self.view, ids, tail)
            if titles is None:
                titles = self._titles(ids)
            # the tokenizer is loaded when first used (this version's: ``after`` is immutable)
            self.view = CatalogueView(model, model.tokens_.codes, titles, previous=self.view,
                                      encoding=lambda: self._load_tokenizer(after))       # the one swap
        return True

    @staticmethod
    def _tail_titles(view, ids: np.ndarray, tail) -> np.ndarray | None:
        """The titles of ``ids`` = ``view``'s items followed by ``tail``'s added items: the
        view's titles plus the added items' texts (no item table read); None when the view
        has no titles or ``ids`` does not extend it."""
        n = view.n_items
        if (tail is None or view.titles is None or len(ids) != n + tail.n_items
                or not np.array_equal(ids[:n], view.item_ids)):
            return None
        new = np.asarray([None if x is None else str(x) for x in tail.texts], dtype=object)
        return np.concatenate([view.titles.astype(object), new])

    def _prebuild(self, model) -> None:
        """Build the trie (and its tables) of ``model`` now, not in the first request."""
        t = model.tokens_.trie
        for d in range(t.width):
            t.level_table(d, self.device)
        t.node_items(self.device)

    def _base_run_codes(self):
        from ..types import Codes

        return Codes.load(self.run_dir / "codes" / "codes")

    def _text_embedder(self):
        from ..embed import TextEmbedder

        if self._embedder is None:
            emb = TextEmbedder(self.embed_meta.get("model", "default"),
                               normalize=bool(self.embed_meta.get("normalize", True)),
                               device=str(self.device), cache=False, show_progress=False)
            emb._load_model()
            self._embedder = emb
        return self._embedder

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """The run's text embeddings of ``texts`` (one (n, d) float32 array)."""
        with self._embed_lock:
            return np.asarray(self._text_embedder().embed(list(texts)), np.float32)

    def embed_text(self, text: str) -> np.ndarray:
        """The run's text embedding of ``text`` (the model is loaded once, on first use or
        by :meth:`load_text_model`)."""
        with self._embed_lock:
            return self._text_embedder().embed([text])[0]

    @property
    def text_model_loaded(self) -> bool:
        return self._embedder is not None

    def load_text_model(self) -> None:
        """Load the run's text model now (the server does it in a background thread at start,
        so the first text /encode does not wait for it); errors surface at that request."""
        try:
            with self._embed_lock:
                self._text_embedder()
        except Exception:  # noqa: BLE001 - the request that needs the model reports it
            pass

    # -------------------------------------------------------------- model card
    def card(self) -> dict[str, Any]:
        """What the page at / shows: data set, tokenizer, diagnostics headline, metrics, settings."""
        run, doc = self.run_dir, self.metrics

        def meta_summary(stage):
            p = run / stage / "meta.json"
            try:
                return (read_json(p).get("summary") or {}) if p.is_file() else {}
            except ArtifactError:
                return {}

        codes_summary = {}
        if (run / "codes" / "summary.json").is_file():
            try:
                codes_summary = read_json(run / "codes" / "summary.json")
            except ArtifactError:
                pass
        model_cfg = (doc.get("models") or {}).get(self.label) or {}
        return {"run": str(run), "label": self.label, "seed": self.seed, "type": self.model.name,
                "generative": self.generative, "mask_seen_default": self.mask_seen_default,
                "device": str(self.device), "n_items": self.n_items, "protocol": doc.get("protocol") or {},
                "data": meta_summary("data"), "codes": codes_summary, "diagnostics": meta_summary("diagnostics"),
                "summary": doc.get("summary") or {}, "labels": doc.get("labels") or [],
                "record": self.record, "model": model_cfg.get("model") or self.model.get_params(),
                "train": model_cfg.get("train") or {}}

    def example_history(self, n: int = 5) -> list[str]:
        """A real history to prefill the page's form: the end of the first test user's sequence."""
        try:
            from ..data import Split

            df = Split.load(self.run_dir / "split").df
            u = df["user_id"].iloc[0]
            seq = df[(df["user_id"] == u) & (df["role"] == "train")].sort_values("position")["item_id"]
            ids = seq.astype(str).tolist()[-n:]
            _, unknown = self.index_of(ids)
            if ids and not unknown:
                return ids
        except (ArtifactError, DataError, KeyError, OSError):
            pass
        return self.item_ids[:n].tolist()
