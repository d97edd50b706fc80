"""`sidkit serve RUN_DIR`: the recommendation API of a trained run (docs/serving.md)."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Optional

import typer

from ..errors import ConfigError
from ._common import handle_errors

TOKEN_ENV = "SIDKIT_SERVE_TOKEN"


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (127.0.0.0/8, ::1, localhost)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@handle_errors
def serve(
    run_dir: Path = typer.Argument(..., help="A run directory written by sidkit run (or sidkit train)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (loopback by default; any "
                             "other address warns unless a token is set)."),
    port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cpu or cuda."),
    model: Optional[str] = typer.Option(None, "--model", help="Model label to serve: any model of the run "
                                        "(causal_sid, tiger, sasrec, popularity, ...; default: the best causal "
                                        "SID model)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of that model (default: best validation NDCG@10)."),
    max_batch: int = typer.Option(64, "--max-batch", min=1, help="Most requests per batched beam search."),
    max_wait_ms: float = typer.Option(5.0, "--max-wait-ms", min=0, help="Longest wait of a batch's first request for company."),
    max_queue: int = typer.Option(256, "--max-queue", min=1, help="Requests that may wait; beyond: 503 + Retry-After."),
    threads: Optional[int] = typer.Option(None, "--threads", min=1, help="torch CPU threads (default: torch's)."),
    text_model: str = typer.Option("preload", "--text-model", help="The text model of POST /encode {text}: "
                                   "preload (background load at start), lazy (at the first text request) or off."),
    token: Optional[str] = typer.Option(None, "--token", envvar=TOKEN_ENV, show_envvar=True,
                                        help="Bearer token every request but / and /health must send "
                                             "(Authorization: Bearer TOKEN). Prefer the environment variable: "
                                             "a command-line argument is visible to other users in ps."),
    docs: bool = typer.Option(False, "--docs", help="Also serve /docs (Swagger UI) and /redoc; their pages load "
                              "JavaScript from a CDN (cdn.jsdelivr.net), so they are off by default."),
    shutdown_timeout: float = typer.Option(20.0, "--shutdown-timeout", min=0.5,
                                           help="Seconds from SIGTERM to exit at most: requests in flight are "
                                                "answered, new ones get 503."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level (warning: no access log)."),
    items_process: str = typer.Option("preload", "--items-process",
                                      help="Where POST /items does its work: a helper process started with "
                                           "the server (preload), at the first update (lazy), or a thread of "
                                           "the server (off: an update then slows the recommendations more)."),
    watch_catalogue: float = typer.Option(1.0, "--watch-catalogue", min=0,
                                          help="Seconds between checks for items other processes added to the "
                                               "run (sidkit add-items): they become recommendable without a "
                                               "restart; 0: never."),
) -> None:
    """Serve a run's recommender over HTTP (FastAPI + uvicorn): /recommend, /encode,
    /items/{id}/sid, /sids/{sid}/item, /health, /metrics and a model card at /."""
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise ConfigError("sidkit serve needs FastAPI and uvicorn, which are not installed",
                          'pip install "sidkit[serve]"') from None
    from ..serve import create_app
    from ..serve.server import run

    if not token and not is_loopback(host):
        typer.echo(f"warning: --host {host} is not a loopback address and no token is set: anyone who can reach "
                   f"port {port} can query the model and read the model card. Set {TOKEN_ENV} (or --token), or "
                   "put a proxy that authenticates in front (docs/serving.md, Security).", err=True)
    if threads:
        import torch

        torch.set_num_threads(threads)
    app = create_app(run_dir, label=model, seed=seed, device=device, max_batch=max_batch,
                     max_wait_ms=max_wait_ms, max_queue=max_queue, text_model=text_model, token=token, docs=docs,
                     watch_catalogue=watch_catalogue, items_process=items_process)
    s = app.state.served
    typer.echo(f"serving {s.label} (seed {s.seed}, {s.model.name}, {s.n_items} items) from {run_dir} on "
               f"http://{host}:{port} (device {s.device}; batches of <= {max_batch} requests, "
               f"<= {max_wait_ms:g} ms wait, queue {max_queue}; "
               f"{'bearer token required' if token else 'no token'}; shutdown within {shutdown_timeout:g} s)",
               err=True)
    run(app, host=host, port=port, log_level=log_level, shutdown_timeout=shutdown_timeout)
