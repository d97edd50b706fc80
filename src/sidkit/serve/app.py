"""The FastAPI application: :func:`create_app` (docs/serving.md).

Endpoints: ``POST /recommend``, ``POST /encode``, ``GET /items/{item_id}/sid``,
``GET /sids/{sid}/item``, ``GET /health``, ``GET /metrics`` (Prometheus text) and the
model card page at ``/``.  Every error is ``{"detail": "..."}`` with a 4xx status that
names the problem; validation errors (422) also list ``errors`` (field, message, type);
malformed JSON is 400, a body over ``max_body_bytes`` 413, a full queue 503 with
``Retry-After``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, SidkitError
from .batcher import MicroBatcher, QueueFull
from .metrics import CONTENT_TYPE, ServerMetrics
from .runtime import RecRequest, ServedModel, format_sid, parse_sid
from .schemas import (EncodeRequest, EncodeResponse, ErrorResponse, Health, ItemSID, RecommendRequest,
                       RecommendResponse, ValidationErrorResponse)

RETRY_AFTER_S = 1


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of an operation's error codes."""
    text = {400: "Malformed JSON body.", 404: "No such item or SID.",
            409: "The run cannot answer this (e.g. it has no tokenizer for the served model's SIDs).",
            413: "Request body too large.", 422: "Invalid request: the message names the field and the problem.",
            503: "The request queue is full: retry after the number of seconds in Retry-After."}
    out: dict[int | str, dict[str, Any]] = {}
    for c in codes:
        out[c] = {"model": ValidationErrorResponse if c == 422 else ErrorResponse, "description": text[c]}
        if c == 503:
            out[c]["headers"] = {"Retry-After": {"description": "Seconds to wait before retrying.",
                                                 "schema": {"type": "integer"}}}
    return out


def _field_message(err: dict[str, Any]) -> str:
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "path", "query")]
    where = ".".join(loc) or "request body"
    msg = err.get("msg", "invalid")
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    got = err.get("input")
    try:
        shown = "" if got is None or isinstance(got, (dict, list)) else f" (got {json.dumps(got)[:80]})"
    except (TypeError, ValueError):
        shown = f" (got {repr(got)[:80]})"
    return f"{where}: {msg}{shown}"


class _GuardMiddleware:
    """Pure ASGI middleware: request counts and latency by route template, and a body
    size limit (413 before the body is read when Content-Length says so, else while
    reading it)."""

    def __init__(self, app, metrics: ServerMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = {"code": 500, "started": False}

        async def send_wrapper(msg):
            if msg["type"] == "http.response.start":
                status["code"] = msg["status"]
                status["started"] = True
            await send(msg)

        too_big = False
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.max_body
                except ValueError:
                    too_big = False
        seen = {"n": 0}

        class BodyTooLarge(Exception):
            pass

        async def limited_receive():
            msg = await receive()
            if msg["type"] == "http.request":
                seen["n"] += len(msg.get("body", b""))
                if seen["n"] > self.max_body:
                    raise BodyTooLarge
            return msg

        try:
            if too_big:
                raise BodyTooLarge
            await self.app(scope, limited_receive, send_wrapper)
        except BodyTooLarge:
            if not status["started"]:
                await _send_json(send_wrapper, 413, {"detail": f"request body larger than {self.max_body} bytes; "
                                                               "send a shorter history or a smaller embedding"})
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", None) or "other"
            self.metrics.observe_request(endpoint, scope.get("method", ""), status["code"],
                                         time.perf_counter() - t0)


async def _send_json(send, status: int, body: dict) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})


def create_app(run_dir: str | Path, *, label: str | None = None, seed: int | None = None, device: str = "auto",
               max_batch: int = 64, max_wait_ms: float = 5.0, max_queue: int = 256,
               max_body_bytes: int = 1 << 20, text_model: str = "preload", served: ServedModel | None = None):
    """The serving app of a run directory; the model is loaded here, once.

    ``label``/``seed``: which model (default: the best causal SID model, see
    :mod:`sidkit.serve.runtime`); ``device``: "auto" (CUDA when present), "cpu", "cuda";
    ``max_batch``/``max_wait_ms``/``max_queue``: the micro-batcher
    (:class:`~sidkit.serve.batcher.MicroBatcher`); ``max_body_bytes``: the largest
    request body accepted; ``text_model``: the run's text model (for text /encode) is loaded
    in a background thread at start ("preload"), at the first such request ("lazy"), or
    never ("off": text /encode answers 409, embeddings still work).  ``served``: an already loaded :class:`ServedModel` (tests).
    """
    from fastapi import FastAPI, HTTPException, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    from .page import render_page

    if text_model not in ("preload", "lazy", "off"):
        raise ConfigError(f"text_model must be 'preload', 'lazy' or 'off', got {text_model!r}",
                          "use --text-model preload (the default)")
    served = served or ServedModel(run_dir, label, seed, device)
    served.text_model_off = text_model == "off"
    metrics = ServerMetrics()
    batcher = MicroBatcher(served.recommend_batch, max_batch=max_batch, max_wait_ms=max_wait_ms,
                           max_queue=max_queue, on_batch=metrics.observe_batch)
    example = served.example_history()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        if text_model == "preload" and served.text_encoding:
            threading.Thread(target=served.load_text_model, name="sidkit-text-model", daemon=True).start()
        try:
            yield
        finally:
            await batcher.close()                  # finishes every queued request

    app = FastAPI(
        title="sidkit recommendation API",
        version=_version(),
        description=(f"Generative recommendation over Semantic IDs: model `{served.label}` (seed {served.seed}, "
                     f"{served.model.name}) of the run `{served.run_dir.name}`, {served.n_items} items. "
                     "See docs/serving.md."),
        lifespan=lifespan,
    )
    app.state.served = served
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.add_middleware(_GuardMiddleware, metrics=metrics, max_body_bytes=max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errs = list(exc.errors())
        bad_json = [e for e in errs if e.get("type") == "json_invalid"]
        if bad_json:
            ctx = (bad_json[0].get("ctx") or {}).get("error", "")
            return JSONResponse({"detail": f"malformed JSON body: {ctx}".rstrip(": ")}, status_code=400)
        raw = [e for e in errs if isinstance(e.get("input"), (bytes, str)) and tuple(e.get("loc", ())) == ("body",)]
        if raw:                                  # a body FastAPI did not parse: not sent as JSON
            ctype = request.headers.get("content-type", "none")
            return JSONResponse({"detail": f"the request body must be a JSON object sent with Content-Type: "
                                           f"application/json (got Content-Type: {ctype})"}, status_code=400)
        items = [{"loc": [p if isinstance(p, (int, str)) else str(p) for p in e.get("loc", ())],
                  "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))} for e in errs]
        return JSONResponse({"detail": "; ".join(_field_message(e) for e in errs), "errors": items},
                            status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"detail": str(exc.detail)}, status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(SidkitError)
    async def _sidkit(request: Request, exc: SidkitError):
        return JSONResponse({"detail": str(exc).replace("\n  fix: ", "; fix: ")}, status_code=422)

    # ------------------------------------------------------------------ endpoints
    @app.post("/recommend", response_model=RecommendResponse, responses=_errors(400, 413, 422, 503),
              summary="Top-k items for a history (micro-batched trie-constrained beam search)")
    async def recommend(req: RecommendRequest):
        ids = req.item_ids()
        idx, unknown = served.index_of(ids)
        if unknown:
            uniq = list(dict.fromkeys(unknown))
            raise HTTPException(422, f"unknown item id(s): {uniq[:20]}{' ...' if len(uniq) > 20 else ''} "
                                     f"({len(unknown)} of {len(ids)} history items are not in the served "
                                     f"model's catalogue of {served.n_items} items)")
        try:
            res = await batcher.submit(RecRequest(np.asarray(idx, np.int64), req.k, req.beam, req.user))
        except QueueFull as e:
            metrics.rejected += 1
            return JSONResponse({"detail": f"{e}; retry after {RETRY_AFTER_S} s"}, status_code=503,
                                headers={"Retry-After": str(RETRY_AFTER_S)})
        # a plain dict in a JSONResponse: FastAPI would otherwise validate the answer against
        # RecommendResponse once more (the schema still documents it; the tests check conformance)
        items = [{"item_id": str(served.item_ids[i]), "score": s, "sid": str(served.sid_strings[i]),
                  "title": served.title(i)} for i, s in zip(res.items.tolist(), res.scores.tolist())]
        return JSONResponse({"model": served.label, "seed": served.seed, "k": req.k, "beam": req.beam,
                             "items": items})

    @app.post("/encode", response_model=EncodeResponse, responses=_errors(400, 409, 413, 422),
              summary="The Semantic ID of an item from its text or embedding (the tokenizer's encode)")
    def encode(req: EncodeRequest):
        if served.tokenizer is None:
            raise HTTPException(409, f"{served.encode_unavailable}; /encode is not available for this model")
        if req.text is not None:
            if served.text_model_off:
                raise HTTPException(409, "text encoding is switched off on this server (--text-model off); send "
                                         f"'embedding': the item's vector of {served.embedding_dim} floats")
            if not served.text_encoding:
                raise HTTPException(422, f"this run's item embeddings are not text embeddings (source: "
                                         f"{served.embed_source}), so the server cannot embed text; send "
                                         f"'embedding': the item's vector of {served.embedding_dim} floats")
            vec = served.embed_text(req.text)
        else:
            vec = np.asarray(req.embedding, np.float64)
            if served.embedding_dim is not None and vec.shape[0] != served.embedding_dim:
                raise HTTPException(422, f"embedding has {vec.shape[0]} values but this run's embeddings have "
                                         f"{served.embedding_dim} dimensions")
            if not np.isfinite(vec.astype(np.float32)).all():
                raise HTTPException(422, "embedding holds values that are not finite float32 numbers "
                                         "(NaN, infinity or beyond +-3.4e38)")
        tokens, item = served.encode(vec)
        return EncodeResponse(sid=format_sid(tokens), tokens=tokens, catalogue_item=item, new_item=item is None)

    @app.get("/items/{item_id}/sid", response_model=ItemSID, responses=_errors(404, 422),
             summary="The Semantic ID of a catalogue item")
    async def item_sid(item_id: str):
        idx, unknown = served.index_of([item_id])
        if unknown:
            raise HTTPException(404, f"item {item_id[:100]!r} is not in the served model's catalogue "
                                     f"({served.n_items} items)")
        i = int(idx[0])
        n = int(served.codes.lengths[i])
        return ItemSID(item_id=item_id, sid=served.sid_strings[i],
                       tokens=[int(t) for t in served.codes.codes[i, :n]], title=served.title(i))

    @app.get("/sids/{sid}/item", response_model=ItemSID, responses=_errors(404, 422),
             summary="The catalogue item holding a Semantic ID (written like 12-3-7-0)")
    async def sid_item(sid: str):
        try:
            tokens = parse_sid(sid)
        except SidkitError as e:
            raise HTTPException(422, str(e).replace("\n  fix: ", "; fix: ")) from None
        i = served.item_of_sid(tokens)
        if i < 0:
            raise HTTPException(404, f"no catalogue item has the SID {sid!r} (SIDs have {served.codes.n_levels} "
                                     f"tokens, level sizes {list(served.codes.codebook_sizes)})")
        return ItemSID(item_id=served.item_ids[i], sid=served.sid_strings[i], tokens=tokens, title=served.title(i))

    @app.get("/health", response_model=Health, summary="Liveness and what is served")
    async def health():
        return Health(status="ok", model=served.label, seed=served.seed, model_type=served.model.name,
                      device=str(served.device), n_items=served.n_items, n_levels=served.codes.n_levels,
                      max_history_used=served.max_len, queue_depth=batcher.depth,
                      text_encoding=served.text_encoding, text_model_loaded=served.text_model_loaded,
                      text_template=served.text_template(),
                      embedding_dim=served.embedding_dim)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text format 0.0.4)",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
    async def prometheus():
        return PlainTextResponse(metrics.render(batcher.depth), media_type=CONTENT_TYPE)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        return HTMLResponse(render_page(served.card(), example, served.text_template()))

    return app


def _version() -> str:
    from .. import __version__

    return __version__
