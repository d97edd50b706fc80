"""``POST /items`` in a helper process, so that an update does not slow the recommendations.

An update's work -- parsing and validating a body of up to 1,000 embeddings (~8 MB of
JSON), ``encode_new``, checking that every SID model of the run can take the items, and
writing the next ``RUN/catalogue`` version -- holds the GIL for most of its ~0.1-0.2 s.
Done in the server process it stalls the batcher's beam searches: on the 2-core CPU the
p99 latency of the recommendations during an update was 5-6x their p99 without one
(``benchmarks/serve.py --add-items``).  :class:`ItemWriter` does that work in one spawned
process (started at the first update, kept warm), with ``sidkit add-items``'s own code
(:func:`sidkit.catalogue.add_items_to_run`, under the run's writer lock); the server then
takes the committed version in with :meth:`ServedModel.refresh`, which only inserts the
new items' SIDs into its trie.

The helper answers with a tagged tuple, never a half-done update:

- ``("ok", summary)``: committed (the summary of ``add_items_to_run``);
- ``("texts", ids, texts)``: the items have texts and no embeddings -- the server embeds
  them with the text model it holds and sends the embeddings (and texts) back;
- ``("http", status, detail)`` and ``("invalid", errors)``: bad input, nothing written;
- a :class:`~sidkit.errors.SidkitError` raised in the helper is raised here (nothing written).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _plain_errors(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Pydantic error dicts that cross a process boundary (their context as text)."""
    out = []
    for e in errors:
        e = dict(e)
        if "ctx" in e:
            e["ctx"] = {k: str(v) for k, v in (e["ctx"] or {}).items()}
        out.append(e)
    return out


def parse_body(body: bytes, embedding_dim: int | None) -> tuple:
    """A ``POST /items`` body: ``("texts", ids, texts)``, ``("embeddings", ids, array)``, or the
    bad-input answers ``("http", status, detail)`` / ``("invalid", errors)``."""
    from pydantic import ValidationError

    from .schemas import AddItemsRequest

    try:
        req = AddItemsRequest.model_validate_json(body)
    except ValidationError as e:
        errs = e.errors(include_url=False)
        bad = [err for err in errs if err.get("type") == "json_invalid"]
        if bad:
            return ("http", 400, f"malformed JSON body: {bad[0].get('msg', '')}")
        return ("invalid", _plain_errors(errs))
    ids = [str(it.item_id) for it in req.items]
    if req.items[0].text is not None:
        return ("texts", ids, [it.text for it in req.items])
    emb = [it.embedding for it in req.items]
    dims = {len(v) for v in emb}
    if len(dims) > 1:
        return ("http", 422, f"the embeddings have different lengths {sorted(dims)}; this run's embeddings "
                             f"have {embedding_dim} dimensions")
    return ("embeddings", ids, np.asarray(emb, np.float32))


def write_items(run: str, body: bytes | None = None, ids: Sequence[str] | None = None,
                embeddings: np.ndarray | None = None, texts: Sequence[str] | None = None,
                embedding_dim: int | None = None) -> tuple:
    """The helper's job: a raw ``POST /items`` body, or (after the server embedded the texts)
    ``ids`` with ``embeddings`` (and ``texts``).  See the module docstring for the answer."""
    from ..catalogue import add_items_to_run

    if body is not None:
        parsed = parse_body(body, embedding_dim)
        if parsed[0] != "embeddings":
            return parsed
        _, ids, embeddings = parsed
    summary = add_items_to_run(run, list(ids), embeddings=embeddings, texts=texts)
    return ("ok", summary)


def _warm() -> bool:
    """Imports the helper's modules (the first update then pays no start-up)."""
    from .. import catalogue  # noqa: F401
    from . import schemas  # noqa: F401

    return True


def _init_helper() -> None:
    import os

    os.environ["SIDKIT_NO_PROGRESS"] = "1"
    try:
        os.nice(10)      # background work: where cores are short, the server's recommendations go first
    except (AttributeError, OSError):
        pass
    import torch

    torch.set_num_threads(1)


class ItemWriter:
    """One helper process for ``POST /items`` (spawned on first use, or by :meth:`start`)."""

    def __init__(self) -> None:
        self._pool = None
        self._lock = threading.Lock()

    def start(self, warm: bool = True) -> None:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with self._lock:
            if self._pool is None:
                self._pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_helper)
                if warm:
                    self._pool.submit(_warm)

    def __call__(self, run: str | Path, **kw) -> tuple:
        from concurrent.futures.process import BrokenProcessPool

        self.start(warm=False)
        try:
            return self._pool.submit(write_items, str(run), **kw).result()
        except BrokenProcessPool:              # the helper died (killed, out of memory): a fresh one next time
            with self._lock:
                self._pool = None
            raise

    def close(self) -> None:
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
