"""Serving a trained run: ``sidkit serve RUN_DIR`` (docs/serving.md).

- :func:`create_app`: the FastAPI app of a run directory (model loaded once),
- :class:`ServedModel`: the run's recommender (a generative SID model by default; SASRec or
  popularity on request), catalogue, SIDs, tokenizer,
- :class:`MicroBatcher`: concurrent requests gathered into one batched beam search,
- :func:`sidkit.serve.server.run`: uvicorn with a drained, bounded shutdown.

Needs the ``serve`` extra (``pip install "sidkit[serve]"``: FastAPI and uvicorn).
"""

from .batcher import MicroBatcher, QueueFull
from .runtime import ServedModel, choose_model, format_sid, parse_sid


def create_app(run_dir, **kw):
    """The FastAPI app of ``run_dir``; see :func:`sidkit.serve.app.create_app`."""
    from .app import create_app as _create

    return _create(run_dir, **kw)


__all__ = ["MicroBatcher", "QueueFull", "ServedModel", "choose_model", "create_app", "format_sid", "parse_sid"]
