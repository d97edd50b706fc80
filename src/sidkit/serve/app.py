"""The FastAPI application: :func:`create_app` (docs/serving.md).

Endpoints: ``POST /recommend``, ``POST /encode``, ``GET /items/{item_id}/sid``,
``GET /sids/{sid}/item``, ``GET /health``, ``GET /metrics`` (Prometheus text) and the
model card page at ``/``.  Every error is ``{"detail": "..."}`` with a 4xx status that
names the problem; validation errors (422) also list ``errors`` (field, message, type);
malformed JSON is 400, a body over ``max_body_bytes`` 413 (whether its size is announced
by Content-Length or not: chunked bodies are counted as they arrive), a missing or wrong
bearer token 401 (when the server has one), a full queue or a server shutting down 503
with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import hmac
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, DataError, SidkitError
from .batcher import MicroBatcher, QueueFull
from .metrics import CONTENT_TYPE, ServerMetrics
from .runtime import RecRequest, ServedModel, format_sid, parse_sid
from .schemas import (AddItemsRequest, AddItemsResponse, EncodeRequest, EncodeResponse, ErrorResponse, Health, ItemSID, RecommendRequest,
                       RecommendResponse, ValidationErrorResponse, control_character)
from .server import Drain
from .writer import ItemWriter, parse_body

try:                                  # the one route that reads its body itself (POST /items) needs the
    from starlette.requests import Request as StarletteRequest   # class at import time (string annotations)
except ImportError:                   # pragma: no cover - serve's extra not installed
    StarletteRequest = Any

RETRY_AFTER_S = 1
PUBLIC_PATHS = ("/", "/health")       # answered without the bearer token (the page asks for it itself)
SHUTTING_DOWN = "the server is shutting down"


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` of an operation's error codes."""
    text = {400: "Malformed JSON body.", 401: "Missing or wrong bearer token (the server runs with --token).",
            404: "No such item or SID.",
            409: "The run cannot answer this (e.g. it has no tokenizer for the served model's SIDs).",
            413: "Request body too large.", 422: "Invalid request: the message names the field and the problem.",
            503: "The request queue is full, or the server is shutting down: retry after the number of "
                 "seconds in Retry-After."}
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


def _json_kind(v: Any) -> str:
    return {str: "a JSON string", list: "a JSON array", bool: "a JSON boolean", type(None): "JSON null",
            int: "a JSON number", float: "a JSON number"}.get(type(v), f"a {type(v).__name__}")


def _is_json_type(ctype: str) -> bool:
    """Whether FastAPI parses a body of this Content-Type as JSON (application/json, */*+json)."""
    main = ctype.split(";", 1)[0].strip().lower()
    return main == "application/json" or (main.startswith("application/") and main.endswith("+json"))


class _GuardMiddleware:
    """Pure ASGI middleware in front of every request:

    - the drain (see :mod:`sidkit.serve.server`): while the server shuts down, a request
      on a connection that was not open at the signal gets 503 at once; requests in
      flight are counted;
    - the bearer token (when set): constant-time comparison of SHA-256 digests
      (:func:`hmac.compare_digest`), 401 with ``WWW-Authenticate: Bearer``; ``/`` and
      ``/health`` are public;
    - the body limit: 413 before reading when Content-Length says so, else the body is
      read here, counted as it arrives (chunked uploads) and handed on in one piece;
    - request counts and latency by route template (Prometheus), and
      ``X-Content-Type-Options: nosniff`` on every answer.
    """

    def __init__(self, app, metrics: ServerMetrics, max_body_bytes: int, drain: Drain,
                 token: str | None = None, max_items_body_bytes: int | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body_bytes
        self.max_items_body = max_items_body_bytes or max_body_bytes
        self.drain = drain
        self.token_digest = hashlib.sha256(token.encode()).digest() if token else None

    def _authorized(self, scope) -> tuple[bool, str]:
        got = b""
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                got = value
                break
        scheme, _, cred = got.strip().partition(b" ")
        same = hmac.compare_digest(hashlib.sha256(cred.strip()).digest(), self.token_digest)
        if same and scheme.lower() == b"bearer":
            return True, ""
        if not got:
            return False, "this server needs a bearer token: send the header 'Authorization: Bearer <token>'"
        return False, "wrong bearer token (send 'Authorization: Bearer <token>' with the server's token)"

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
                msg = {**msg, "headers": [*msg.get("headers", ()), (b"x-content-type-options", b"nosniff")]}
            await send(msg)

        d = self.drain
        d.inflight += 1
        d.touch()
        try:
            if not d.admit(scope.get("client")):
                d.refused += 1
                await _send_json(send_wrapper, 503, {"detail": f"{SHUTTING_DOWN}; retry after {RETRY_AFTER_S} s"},
                                 [(b"retry-after", str(RETRY_AFTER_S).encode()), (b"connection", b"close")])
                return
            if self.token_digest is not None and scope.get("path") not in PUBLIC_PATHS:
                ok, why = self._authorized(scope)
                if not ok:
                    await _send_json(send_wrapper, 401, {"detail": why}, [(b"www-authenticate", b"Bearer")])
                    return
            body = await self._read_body(scope, receive, send_wrapper)
            if body is None:
                return
            sent = False

            async def replay():
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            try:
                await self.app(scope, replay, send_wrapper)
            except asyncio.CancelledError:
                # the shutdown deadline cancelled a request still in flight (its batch runs on):
                # it gets a 503 instead of uvicorn's 500 or a closed connection
                if not (d.draining and not status["started"]):
                    raise
                await _send_json(send_wrapper, 503, {"detail": f"{SHUTTING_DOWN}; retry after {RETRY_AFTER_S} s"},
                                 [(b"retry-after", str(RETRY_AFTER_S).encode()), (b"connection", b"close")])
        finally:
            d.inflight -= 1
            d.touch()
            route = scope.get("route")
            endpoint = getattr(route, "path_format", None) or getattr(route, "path", None) or "other"
            self.metrics.observe_request(endpoint, scope.get("method", ""), status["code"],
                                         time.perf_counter() - t0)

    async def _read_body(self, scope, receive, send) -> bytes | None:
        """The whole request body, or None when a 413 was sent (or the client left)."""
        limit = self.max_items_body if scope.get("path") == "/items" else self.max_body
        too_big = (f"request body larger than {limit} bytes; send fewer items per request" if scope.get("path")
                   == "/items" else
                   f"request body larger than {limit} bytes; send a shorter history or a smaller embedding")
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    n = int(value)
                except ValueError:
                    n = 0
                if n > limit:
                    await _send_json(send, 413, {"detail": too_big}, [(b"connection", b"close")])
                    return None
        chunks, n = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            n += len(chunk)
            if n > limit:
                await _send_json(send, 413, {"detail": too_big}, [(b"connection", b"close")])
                return None
            chunks.append(chunk)
            if not msg.get("more_body", False):
                return b"".join(chunks)


async def _send_json(send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": data})


def create_app(run_dir: str | Path, *, label: str | None = None, seed: int | None = None, device: str = "auto",
               max_batch: int = 64, max_wait_ms: float = 5.0, max_queue: int = 256,
               max_body_bytes: int = 1 << 20, max_items_body_bytes: int = 32 << 20,
               text_model: str = "preload", token: str | None = None,
               docs: bool = False, served: ServedModel | None = None, watch_catalogue: float = 1.0,
               items_process: str = "lazy"):
    """The serving app of a run directory; the model is loaded here, once.

    ``label``/``seed``: which model (default: the best causal SID model, see
    :mod:`sidkit.serve.runtime`; SASRec and popularity are served too); ``device``:
    "auto" (CUDA when present), "cpu", "cuda"; ``max_batch``/``max_wait_ms``/``max_queue``:
    the micro-batcher (:class:`~sidkit.serve.batcher.MicroBatcher`); ``max_body_bytes``: the
    largest request body accepted (``max_items_body_bytes`` for ``POST /items``: 1,000
    embeddings as JSON take several MB); ``text_model``: the run's text model (for text /encode)
    is loaded in a background thread at start ("preload"), at the first such request
    ("lazy"), or never ("off": text /encode answers 409, embeddings still work);
    ``token``: a bearer token every request but ``/`` and ``/health`` must send
    (``Authorization: Bearer <token>``; None: no authentication); ``docs``: also serve
    FastAPI's ``/docs`` and ``/redoc`` (their pages load Swagger UI / ReDoc from a CDN,
    so they are off by default).  ``served``: an already loaded :class:`ServedModel` (tests).
    ``watch_catalogue``: every that many seconds a background thread takes in the items
    another process added to the run (``sidkit add-items``; :meth:`ServedModel.refresh`),
    so they are recommendable without a restart (0: never).  ``items_process``: ``POST /items``
    does its work (parse, encode, check, write) in a helper process (:mod:`sidkit.serve.writer`),
    so that an update does not stall the recommendations, started at the first update ("lazy"),
    or at start ("preload", what ``sidkit serve`` does); "off": in a thread of this process.
    """
    from fastapi import FastAPI

    if not (isinstance(watch_catalogue, (int, float)) and watch_catalogue >= 0):
        raise ConfigError(f"watch_catalogue must be a number of seconds >= 0, got {watch_catalogue!r}",
                          "use e.g. --watch-catalogue 1 (0: never take in items added by other processes)")
    if items_process not in ("preload", "lazy", "off"):
        raise ConfigError(f"items_process must be 'preload', 'lazy' or 'off', got {items_process!r}",
                          "use --items-process preload (the default)")
    if text_model not in ("preload", "lazy", "off"):
        raise ConfigError(f"text_model must be 'preload', 'lazy' or 'off', got {text_model!r}",
                          "use --text-model preload (the default)")
    if token is not None:
        bad = control_character(token) or (" holds a space" if " " in token else None)
        if not token or bad or not token.isascii():
            raise ConfigError("the bearer token must be a non-empty string of printable ASCII characters "
                              "without spaces" + (f" (it {bad})" if bad else ""),
                              "set e.g. SIDKIT_SERVE_TOKEN=$(python -c 'import secrets; print(secrets."
                              "token_urlsafe(32))')")
    served = served or ServedModel(run_dir, label, seed, device)
    served.text_model_off = text_model == "off"
    metrics = ServerMetrics()
    drain = Drain()
    writer = ItemWriter() if items_process != "off" and served.takes_new_items else None
    batcher = MicroBatcher(served.recommend_batch, max_batch=max_batch, max_wait_ms=max_wait_ms,
                           max_queue=max_queue, on_batch=metrics.observe_batch)
    # the page prefills a real user's history; with a token the page is public, so it does not
    example = [] if token else served.example_history()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        if text_model == "preload" and served.text_encoding:
            threading.Thread(target=served.load_text_model, name="sidkit-text-model", daemon=True).start()
        if writer is not None and items_process == "preload":
            writer.start()
        # the loaded model, app and libraries are long-lived: out of the cyclic collector's way, so
        # that a collection during an update (which allocates) does not stall requests (measured:
        # the worst recommendation during POST /items at 13k items went from ~155 ms to ~45 ms)
        gc.collect()
        gc.freeze()
        stop = threading.Event()
        if watch_catalogue and served.takes_new_items:
            threading.Thread(target=_watch_catalogue, args=(served, watch_catalogue, stop),
                             name="sidkit-catalogue-watch", daemon=True).start()
        try:
            yield
        finally:
            stop.set()
            await batcher.close()                  # finishes every queued request
            if writer is not None:
                writer.close()

    what = (f"generative recommendation over Semantic IDs: model `{served.label}`" if served.generative
            else f"recommendation by model `{served.label}`")
    app = FastAPI(
        title="sidkit recommendation API",
        version=_version(),
        description=(f"{what[0].upper()}{what[1:]} (seed {served.seed}, {served.model.name}) of the run "
                     f"`{served.run_dir.name}`, {served.n_items} items. See docs/serving.md."),
        lifespan=lifespan,
        docs_url="/docs" if docs else None,
        redoc_url="/redoc" if docs else None,
        swagger_ui_oauth2_redirect_url="/docs/oauth2-redirect" if docs else None,
    )
    app.state.served = served
    app.state.batcher = batcher
    app.state.metrics = metrics
    app.state.drain = drain
    app.add_middleware(_GuardMiddleware, metrics=metrics, max_body_bytes=max_body_bytes, drain=drain, token=token,
                       max_items_body_bytes=max_items_body_bytes)

    _error_handlers(app)
    _recommend_route(app, served, batcher, metrics, drain)
    _items_route(app, served, writer)
    _lookup_routes(app, served)
    _ops_routes(app, served, batcher, metrics, token, example)
    return app


def _error_handlers(app) -> None:
    """Every error as one JSON answer: 400 for a malformed body, 422 naming the field and the
    problem, the status of an HTTPException, 422 for a SidkitError (with its fix)."""
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errs = list(exc.errors())
        bad_json = [e for e in errs if e.get("type") == "json_invalid"]
        if bad_json:
            ctx = (bad_json[0].get("ctx") or {}).get("error", "")
            return JSONResponse({"detail": f"malformed JSON body: {ctx}".rstrip(": ")}, status_code=400)
        whole = [e for e in errs if tuple(e.get("loc", ())) == ("body",) and not isinstance(e.get("input"), dict)]
        if whole:                                # the body as a whole is not a JSON object
            ctype = request.headers.get("content-type", "none")
            if not _is_json_type(ctype):         # FastAPI did not parse it: not sent as JSON
                return JSONResponse({"detail": f"the request body must be a JSON object sent with Content-Type: "
                                               f"application/json (got Content-Type: {ctype})"}, status_code=400)
            e = whole[0]
            v = e.get("input")
            got = ("the body is empty" if e.get("type") == "missing" else f"got {_json_kind(v)}"
                   + ("" if v is None else f": {json.dumps(v)[:80]}"))
            return JSONResponse({"detail": "request body: must be a JSON object with the request's fields, e.g. "
                                           f'{{"history": ["50", "181"], "k": 10}} ({got})',
                                 "errors": [{"loc": ["body"], "msg": "must be a JSON object",
                                             "type": str(e.get("type", ""))}]}, status_code=422)
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


def _recommend_route(app, served: ServedModel, batcher: MicroBatcher, metrics: ServerMetrics,
                     drain: Drain) -> None:
    """``POST /recommend``: through the micro-batcher."""
    from fastapi import HTTPException
    from fastapi.responses import JSONResponse

    @app.post("/recommend", response_model=RecommendResponse, responses=_errors(400, 401, 413, 422, 503),
              summary="Top-k items for a history (micro-batched; SID models: trie-constrained beam search)")
    async def recommend(req: RecommendRequest):
        ids = req.item_ids()
        view = served.view            # one catalogue snapshot for the lookup, the search and the answer
        idx, unknown = view.index_of(ids)
        if unknown:
            uniq = list(dict.fromkeys(unknown))
            raise HTTPException(422, f"unknown item id(s): {uniq[:20]}{' ...' if len(uniq) > 20 else ''} "
                                     f"({len(unknown)} of {len(ids)} history items are not in the served "
                                     f"model's catalogue of {view.n_items} items)")
        mask = served.mask_seen_default if req.mask_seen is None else req.mask_seen
        try:
            res = await batcher.submit(RecRequest(np.asarray(idx, np.int64), req.k, req.beam, req.user, mask,
                                                  view))
        except QueueFull as e:
            metrics.rejected += 1
            headers = {"Retry-After": str(RETRY_AFTER_S)}
            if drain.draining:
                headers["Connection"] = "close"
            return JSONResponse({"detail": f"{e}; retry after {RETRY_AFTER_S} s"}, status_code=503, headers=headers)
        # a plain dict in a JSONResponse: FastAPI would otherwise validate the answer against
        # RecommendResponse once more (the schema still documents it; the tests check conformance)
        items = [{"item_id": str(view.item_ids[i]), "score": s, "sid": view.sid_strings[i],
                  "title": view.title(i)} for i, s in zip(res.items.tolist(), res.scores.tolist())]
        return JSONResponse({"model": served.label, "seed": served.seed, "k": req.k, "beam": req.beam,
                             "mask_seen": mask, "items": items})


def _items_route(app, served: ServedModel, writer: ItemWriter | None) -> None:
    """``POST /items``: new items without retraining (in the helper process ``writer``, or
    in a thread of this process when it is None)."""
    from fastapi import HTTPException
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    @app.post("/items", response_model=AddItemsResponse, responses=_errors(400, 401, 409, 413, 422),
              summary="Add new items without retraining: encode_new, insert into the trie, persist atomically",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                  "schema": {"$ref": "#/components/schemas/AddItemsRequest"}}}}})
    async def add_items(request: StarletteRequest):
        # The body (1,000 embeddings: ~8 MB of JSON) is parsed and validated in a worker
        # thread (pydantic's one-pass JSON validation, 4x faster than json.loads), the update
        # runs there too: the event loop keeps answering /recommend meanwhile, and requests
        # in flight keep the catalogue view they started with (ServedModel.add_items).
        from fastapi.concurrency import run_in_threadpool

        from ..errors import ConfigError as _ConfigError

        body = await request.body()
        ctype = request.headers.get("content-type", "")
        if not _is_json_type(ctype):
            raise HTTPException(400, "the request body must be a JSON object sent with Content-Type: "
                                     f"application/json (got Content-Type: {ctype or 'none'})")
        if writer is not None:
            return JSONResponse(await run_in_threadpool(_add_in_helper, body))

        def work():
            parsed = _bad_input(parse_body(body, served.embedding_dim))
            kw = {"texts": parsed[2]} if parsed[0] == "texts" else {"embeddings": parsed[2]}
            try:
                return served.add_items(parsed[1], **kw)
            except _ConfigError as e:
                raise HTTPException(409, str(e).replace("\n  fix: ", "; fix: ")) from None

        return JSONResponse(await run_in_threadpool(work))

    def _bad_input(out: tuple) -> tuple:
        """``out`` of :mod:`sidkit.serve.writer` unless it is bad input: that is raised as its 4xx."""
        if out[0] == "http":
            raise HTTPException(out[1], out[2])
        if out[0] == "invalid":
            raise RequestValidationError(out[1])
        return out

    def _add_in_helper(body: bytes) -> dict[str, Any]:
        """POST /items with the work in the helper process (:mod:`sidkit.serve.writer`); this
        thread only waits, embeds texts when given, and takes the committed version in."""
        try:
            out = writer(served.run_dir, body=body, embedding_dim=served.embedding_dim)
            if out[0] == "texts":
                _, ids, texts = out
                from ..catalogue import check_texts

                texts = check_texts(texts, len(ids))
                if not served.text_encoding:
                    raise DataError("this server cannot embed text (the run's items were not embedded from text, "
                                    "or the text model is off)",
                                    f"send 'embedding': each item's vector of {served.embedding_dim} floats")
                out = writer(served.run_dir, ids=ids, embeddings=served.embed_texts(texts), texts=texts)
        except ConfigError as e:
            raise HTTPException(409, str(e).replace("\n  fix: ", "; fix: ")) from None
        summary = _bad_input(out)[1]
        served.refresh()
        view = served.view
        ids = list(summary["tokenizer_sids"])
        rows = view.index_of(ids)[0]
        return {"added": summary["added"], "version": summary["version"], "n_items": view.n_items,
                "items": [{"item_id": i, "sid": view.sid_strings[r], "tokens": [int(t) for t in view.codes.codes[r]
                                                                                 [:view.codes.lengths[r]]]}
                          for i, r in zip(ids, rows.tolist())]}

    _openapi = app.openapi

    def openapi_with_items():
        """FastAPI's schema plus the POST /items body model (parsed by hand, off the event loop)."""
        if app.openapi_schema is None:
            schema = _openapi()
            js = AddItemsRequest.model_json_schema(ref_template="#/components/schemas/{model}")
            comps = schema.setdefault("components", {}).setdefault("schemas", {})
            comps.update(js.pop("$defs", {}))
            comps["AddItemsRequest"] = js
        return app.openapi_schema

    app.openapi = openapi_with_items


def _lookup_routes(app, served: ServedModel) -> None:
    """``POST /encode``, ``GET /items/{id}/sid`` and ``GET /sids/{sid}/item``."""
    from fastapi import HTTPException

    def _no_sids():
        return HTTPException(409, f"model {served.label!r} ({served.model.name}) has no SIDs and the run holds no "
                                  "codes of its catalogue, so items have no Semantic ID here")

    # ------------------------------------------------------------------ endpoints

    @app.post("/encode", response_model=EncodeResponse, responses=_errors(400, 401, 409, 413, 422),
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

    # {item_id:path}: an id may hold '/' (sent as %2F, which the server decodes before routing)
    @app.get("/items/{item_id:path}/sid", response_model=ItemSID, responses=_errors(401, 404, 409, 422),
             summary="The Semantic ID of a catalogue item")
    async def item_sid(item_id: str):
        bad = control_character(item_id)
        if bad:
            raise HTTPException(422, f"item_id: the id {bad} (got {json.dumps(item_id)[:80]})")
        idx, unknown = served.index_of([item_id])
        if unknown:
            raise HTTPException(404, f"item {item_id[:100]!r} is not in the served model's catalogue "
                                     f"({served.n_items} items)")
        i = int(idx[0])
        if served.codes is None:
            raise _no_sids()
        n = int(served.codes.lengths[i])
        return ItemSID(item_id=item_id, sid=served.sid_strings[i],
                       tokens=[int(t) for t in served.codes.codes[i, :n]], title=served.title(i))

    @app.get("/sids/{sid}/item", response_model=ItemSID, responses=_errors(401, 404, 409, 422),
             summary="The catalogue item holding a Semantic ID (written like 12-3-7-0)")
    async def sid_item(sid: str):
        try:
            tokens = parse_sid(sid)
        except SidkitError as e:
            raise HTTPException(422, str(e).replace("\n  fix: ", "; fix: ")) from None
        if served.codes is None:
            raise _no_sids()
        i = served.item_of_sid(tokens)
        if i < 0:
            raise HTTPException(404, f"no catalogue item has the SID {sid!r} (SIDs have {served.codes.n_levels} "
                                     f"tokens, level sizes {list(served.codes.codebook_sizes)})")
        return ItemSID(item_id=served.item_ids[i], sid=served.sid_strings[i], tokens=tokens, title=served.title(i))


def _ops_routes(app, served: ServedModel, batcher: MicroBatcher, metrics: ServerMetrics, token: str | None,
                example: list[str]) -> None:
    """``GET /health``, ``GET /metrics`` and the model card page ``GET /``."""
    from fastapi.responses import HTMLResponse, PlainTextResponse

    from .page import render_page

    @app.get("/health", response_model=Health, summary="Liveness and what is served")
    async def health():
        return Health(status="ok", model=served.label, seed=served.seed, model_type=served.model.name,
                      generative=served.generative, device=str(served.device), n_items=served.n_items,
                      n_levels=None if served.codes is None else served.codes.n_levels,
                      mask_seen_default=served.mask_seen_default, auth=token is not None,
                      max_history_used=served.max_len, queue_depth=batcher.depth,
                      text_encoding=served.text_encoding, text_model_loaded=served.text_model_loaded,
                      text_template=served.text_template(),
                      embedding_dim=served.embedding_dim, catalogue_version=served.catalogue_version)

    @app.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics (text format 0.0.4)",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}, **_errors(401)})
    async def prometheus():
        return PlainTextResponse(metrics.render(batcher.depth), media_type=CONTENT_TYPE)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        nonce = secrets.token_urlsafe(18)
        return HTMLResponse(render_page(served.card(), example, served.text_template(), nonce=nonce,
                                        auth=token is not None),
                            headers={"Content-Security-Policy": content_security_policy(nonce),
                                     "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"})


def _watch_catalogue(served: ServedModel, every: float, stop: threading.Event) -> None:
    """Until ``stop``: every ``every`` seconds, take in items other processes added to the
    run.  A catalogue that cannot be read is logged once (per distinct error) and the
    served catalogue stays as it was."""
    import logging

    log = logging.getLogger("sidkit.serve")
    last = None
    while not stop.wait(every):
        try:
            if served.refresh():
                log.warning("took in the run's catalogue version %s: %d items", served.catalogue_version,
                            served.n_items)
            last = None
        except Exception as e:  # noqa: BLE001 - a watcher must not die; the error is logged
            if str(e) != last:
                log.warning("could not take in the run's added items (still serving the previous catalogue): %s", e)
                last = str(e)


def content_security_policy(nonce: str) -> str:
    """The page's CSP: its own inline script and style (by nonce), requests to this origin
    only, nothing else (no other script, no plugins, no framing, no base or form targets)."""
    return (f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
            "img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


def _version() -> str:
    from .. import __version__

    return __version__
