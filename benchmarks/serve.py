"""Load test of `sidkit serve`: throughput and latency of POST /recommend (issue 12).

Usage::

    python benchmarks/serve.py RUN_DIR                       # beam 20, concurrency 1, 8, 32
    python benchmarks/serve.py RUN_DIR --requests 400 --concurrency 1,8,32 --threads 2 --tag _x

Starts ``sidkit serve RUN_DIR`` on 127.0.0.1 (a free port; or ``--url`` of a server that
already runs on this machine: only loopback addresses are accepted), waits for
``/health``, sends ``--warmup`` untimed requests, then for each concurrency level a
**fixed number** of ``POST /recommend`` requests (``k`` 10, beam ``--beam``) from an
async httpx client with that many requests in flight at once (closed loop: each of the
``c`` workers sends its next request when its previous answer arrived).  Histories are
real: the training sequences of the run's users (their last 20 items), cycled in a fixed
order (``--client raw``: a minimal keep-alive HTTP/1.1 client on asyncio streams
instead of httpx, one connection per worker -- httpx's client needed 1.5-4.6 ms of CPU
per request on the machine it shares with the server, and at concurrency 32 it, not the
server, was the bottleneck).  Reported per level: requests (= recommendation lists) per second, p50 / p99 /
max latency (client side, request sent to answer parsed), errors (any non-200 answer or
transport error; **must be 0**, else the script exits 1), the mean micro-batch size
(from the server's ``/metrics``) and the CPU time per request of the server process and
of the client (what each would need on a machine of its own).  The client runs on the same machine as the server and
takes CPU from it; the load average at the start and end is recorded.

Goals (issue 12, 2-core CPU): p99 < 100 ms at concurrency 1, >= 200 recommendations/s at
concurrency 32.

``--model LABEL`` serves another model of the run (e.g. ``sasrec`` or ``popularity`` for an
A/B comparison with the causal SID model); ``--mask-seen`` sends ``mask_seen: true``.  When
``SIDKIT_SERVE_TOKEN`` is set, the started server requires it and the clients send it.

``--shutdown-burst N`` measures the graceful shutdown instead (issue 23): N requests on N
connections, each still arriving (head sent but for its last line break) when SIGTERM
comes, the rest 0.1 s after it, plus N/10 requests on new connections; reports how many
got 200, 503 or no answer (reset, EOF, refused) and when the process exited.

``--add-items N [--updates U] [--items M]`` measures live catalogue updates instead (issue
25): on a synthetic run of ``M`` clustered items (RUN ``synthetic``: an untrained causal SID
model of the default size, built by ``benchmarks/add_items.py``; or a run of yours whose
served model takes new items and whose embeddings are ``RUN/embeddings/embeddings.npy``),
the raw client keeps ``--concurrency`` (its first value) requests in flight for
``--seconds`` ("idle"), then ``U`` times sends one ``POST /items`` of ``N`` new items (a
prepared JSON body of their embeddings, near catalogue items) from another connection,
1 s apart.  Reported: each update's wall time (sent to answered; goal <= 1 s for 1,000
items), and the p50 / p99 / max latency of the recommendations whose request overlapped an
update ("update") beside the idle ones (goal: p99 within 2x); the server runs in its own
process, as in production, so the client's JSON encoding is not the server's GIL time.

``--model-only [--batches 1,8,32,64] [--profile]`` times the served model's batched beam
search in-process instead (no HTTP, no client), to separate the model's cost from the
HTTP stack's; ``--in-process`` runs the load levels against the app in this process
(httpx's ASGI transport: the whole app, without sockets, HTTP parsing or a second process).  Writes ``benchmarks/results/serve{tag}.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
LOOPBACK = {"127.0.0.1", "localhost", "::1"}
SERVER_LOG = Path(tempfile.gettempdir()) / f"sidkit-serve-bench-{os.getpid()}.log"


def auth_headers() -> dict[str, str]:
    """The bearer token of ``SIDKIT_SERVE_TOKEN`` (which the started server reads too)."""
    token = os.environ.get("SIDKIT_SERVE_TOKEN")
    return {"Authorization": f"Bearer {token}"} if token else {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def histories(run: Path, n: int = 512, last: int = 20, seed: int = 0) -> list[list[str]]:
    from sidkit.data import Split

    df = Split.load(run / "split").df
    df = df[df["role"] == "train"].sort_values(["user_id", "position"])
    seqs = [s.astype(str).tolist()[-last:] for _, s in df.groupby("user_id")["item_id"]]
    order = np.random.default_rng(seed).permutation(len(seqs))
    return [seqs[i] for i in order[:n]]


def start_server(run: Path, port: int, args) -> subprocess.Popen:
    cmd = [sys.executable, "-c", "from sidkit.cli import main; main()", "serve", str(run), "--host", "127.0.0.1",
           "--port", str(port), "--device", args.device, "--log-level", "warning",
           "--max-batch", str(args.max_batch), "--max-wait-ms", str(args.max_wait_ms), "--max-queue", "1024"]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    if args.model:
        cmd += ["--model", args.model]
    env = {**os.environ, "SIDKIT_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=open(SERVER_LOG, "wb"))


def wait_ready(url: str, proc: subprocess.Popen | None, timeout: float = 300) -> dict:
    """/health of a started server, once its background text-model load is done too (that
    load holds the GIL for seconds and would be measured as request latency)."""
    import httpx

    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"sidkit serve exited with {proc.returncode}: "
                             f"{SERVER_LOG.read_text()[-3000:]}")
        try:
            r = httpx.get(url + "/health", timeout=2, headers=auth_headers())
            h = r.json() if r.status_code == 200 else {}
            if h and (h.get("text_model_loaded") or not h.get("text_encoding")):
                return h
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"no answer from {url}/health within {timeout} s")


def batch_stats(text: str) -> tuple[float, float]:
    s = re.search(r"^sidkit_batch_size_sum (\S+)$", text, re.M)
    c = re.search(r"^sidkit_batch_size_count (\S+)$", text, re.M)
    return (float(s.group(1)) if s else 0.0), (float(c.group(1)) if c else 0.0)


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a process (Linux /proc), None when unknown."""
    if pid is None:
        return None
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _level_stats(lat, errors, n, conc, wall, before, after, server_cpu, client_cpu) -> dict:
    """One load level's figures from its latencies (s), errors, /metrics batch stats before
    and after, and the server's and this process's CPU seconds at the start and end."""
    a = np.asarray(lat) * 1000
    n_batches = after[1] - before[1]
    (s0, s1), (c0, c1) = server_cpu, client_cpu
    return {"concurrency": conc, "requests": n, "seconds": wall, "rec_per_s": n / wall,
            "p50_ms": float(np.percentile(a, 50)), "p99_ms": float(np.percentile(a, 99)), "max_ms": float(a.max()),
            "mean_ms": float(a.mean()), "errors": len(errors), "error_examples": errors[:5],
            "mean_batch": (after[0] - before[0]) / n_batches if n_batches else None,
            "server_cpu_ms_per_req": (s1 - s0) / n * 1000 if s0 is not None and s1 is not None else None,
            "client_cpu_ms_per_req": (c1 - c0) / n * 1000}


class RawClient:
    """A minimal HTTP/1.1 keep-alive client on asyncio streams, one connection per worker:
    ``POST`` a prepared JSON body, read the status line, headers and ``Content-Length``
    body.  It costs a fraction of httpx's CPU per request, so on a machine shared with the
    server the load test measures the server rather than the client (``--client raw``)."""

    def __init__(self, url: str):
        u = urlparse(url)
        self.host, self.port = u.hostname, u.port or 80
        self.conn = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.conn is None:
            self.conn = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.conn
        auth = "".join(f"{k}: {v}\r\n" for k, v in auth_headers().items())
        writer.write(f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n{auth}"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(int(h.split(":", 1)[1]) for h in lines[1:] if h.lower().startswith("content-length:"))
        return status, await reader.readexactly(length)

    async def close(self) -> None:
        if self.conn is not None:
            self.conn[1].close()
            self.conn = None


async def level_raw(url: str, hists: list[list[str]], n: int, conc: int, k: int, beam: int, offset: int,
                    server_pid: int | None = None, mask_seen: bool = False) -> dict:
    """:func:`level` with one :class:`RawClient` connection per worker."""
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    nxt = {"i": 0}
    before = batch_stats(httpx.get(url + "/metrics", headers=auth_headers()).text)
    bodies = [json.dumps({"history": h, "k": k, "beam": beam, "mask_seen": mask_seen}).encode()
              for h in hists]                                                           # off the clock
    clients = [RawClient(url) for _ in range(conc)]

    async def worker(client):
        while nxt["i"] < n:
            i = nxt["i"]
            nxt["i"] += 1
            t = time.perf_counter()
            try:
                status, body = await client.post("/recommend", bodies[(offset + i) % len(bodies)])
                if status != 200 or len(json.loads(body)["items"]) != k:
                    errors.append(f"{status}: {body[:200]!r}")
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                errors.append(f"{type(e).__name__}: {e}")
                await client.close()
            lat.append(time.perf_counter() - t)

    t0, s0, c0 = time.perf_counter(), cpu_seconds(server_pid), time.process_time()
    await asyncio.gather(*(worker(c) for c in clients))
    wall = time.perf_counter() - t0
    s1, c1 = cpu_seconds(server_pid), time.process_time()
    for c in clients:
        await c.close()
    after = batch_stats(httpx.get(url + "/metrics", headers=auth_headers()).text)
    return _level_stats(lat, errors, n, conc, wall, before, after, (s0, s1), (c0, c1))


async def level(url: str, hists: list[list[str]], n: int, conc: int, k: int, beam: int, offset: int,
                server_pid: int | None = None, transport=None, mask_seen: bool = False) -> dict:
    import httpx

    lat: list[float] = []
    errors: list[str] = []
    nxt = {"i": 0}
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits, transport=transport,
                                 headers=auth_headers()) as client:
        before = batch_stats((await client.get("/metrics")).text)

        bodies = [json.dumps({"history": h, "k": k, "beam": beam, "mask_seen": mask_seen}).encode()
                  for h in hists]                                                       # off the clock
        headers = {"content-type": "application/json"}

        async def worker():
            while nxt["i"] < n:
                i = nxt["i"]
                nxt["i"] += 1
                t = time.perf_counter()
                try:
                    r = await client.post("/recommend", content=bodies[(offset + i) % len(bodies)], headers=headers)
                    ok = r.status_code == 200 and len(r.json()["items"]) == k
                    if not ok:
                        errors.append(f"{r.status_code}: {r.text[:200]}")
                except httpx.HTTPError as e:
                    errors.append(f"{type(e).__name__}: {e}")
                lat.append(time.perf_counter() - t)

        t0, s0, c0 = time.perf_counter(), cpu_seconds(server_pid), time.process_time()
        await asyncio.gather(*(worker() for _ in range(conc)))
        wall = time.perf_counter() - t0
        s1, c1 = cpu_seconds(server_pid), time.process_time()
        after = batch_stats((await client.get("/metrics")).text)
    return _level_stats(lat, errors, n, conc, wall, before, after, (s0, s1), (c0, c1))


def in_process(args) -> list[dict]:
    """``--in-process``: the same load levels against the app in this process through
    httpx's ASGI transport -- routing, validation, micro-batching, the model and the JSON
    answers, without sockets, HTTP parsing or a second process.  The CPU column is then
    the server's and the client's together."""
    import httpx
    import torch

    from sidkit.serve.app import create_app

    if args.threads:
        torch.set_num_threads(args.threads)
    app = create_app(args.run, label=args.model, device=args.device, max_batch=args.max_batch,
                     max_wait_ms=args.max_wait_ms, max_queue=1024, text_model="off")
    hists = histories(args.run)

    async def run_all():
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            await level("http://in-process", hists, args.warmup, 4, args.k, args.beam, offset=len(hists) // 2,
                        transport=transport, mask_seen=args.mask_seen)
            return [await level("http://in-process", hists, args.requests, int(c), args.k, args.beam, offset=0,
                                transport=transport, mask_seen=args.mask_seen) for c in args.concurrency.split(",")]

    return asyncio.run(run_all())


async def _exchange(port: int, request: bytes, written: list, go: asyncio.Event | None) -> str:
    """One request on its own connection; its status code, or what went wrong."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError as e:
        return f"refused ({type(e).__name__})"
    try:
        cut = request.index(b"\r\n\r\n") if go is not None else len(request)
        writer.write(request[:cut])
        await writer.drain()
        written.append(1)
        if go is not None:
            await go.wait()
            writer.write(request[cut:])
            await writer.drain()
        line = await asyncio.wait_for(reader.readline(), 60)
        writer.close()
        return line.split()[1].decode() if line else "EOF"
    except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError) as e:
        return type(e).__name__


def shutdown_burst(args) -> None:
    """``--shutdown-burst N``: SIGTERM while N requests arrive (see the module docstring)."""
    import signal
    from collections import Counter

    n = args.shutdown_burst
    if not 1 <= n <= 1000:
        raise SystemExit("--shutdown-burst must lie in 1..1000 (a bounded test)")
    RESULTS.mkdir(exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = start_server(args.run, port, args)
    try:
        wait_ready(url, proc)
        hists = histories(args.run)
        auth = "".join(f"{k}: {v}\r\n" for k, v in auth_headers().items()).encode()

        def request(i: int) -> bytes:
            body = json.dumps({"history": hists[i % len(hists)], "k": args.k, "beam": args.beam}).encode()
            return (b"POST /recommend HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n" + auth +
                    b"Content-Length: %d\r\n\r\n" % len(body)) + body

        async def scenario():
            go, written = asyncio.Event(), []
            tasks = [asyncio.create_task(_exchange(port, request(i), written, go)) for i in range(n)]
            t0 = time.monotonic()
            while len(written) < n and time.monotonic() - t0 < 60:
                await asyncio.sleep(0.002)
            await asyncio.sleep(0.1)
            proc.send_signal(signal.SIGTERM)
            t_sig = time.monotonic()
            await asyncio.sleep(0.1)
            go.set()
            late = [asyncio.create_task(_exchange(port, request(i), [], None)) for i in range(max(1, n // 10))]
            return t_sig, await asyncio.gather(*tasks), await asyncio.gather(*late)

        t_sig, res, late = asyncio.run(scenario())
        rc = proc.wait(120)
        t_exit = time.monotonic() - t_sig
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    cmd = "python benchmarks/serve.py " + " ".join(sys.argv[1:])
    doc = {"command": cmd, "machine": machine(), "arriving": dict(Counter(res)), "late": dict(Counter(late)),
           "exit_code": rc, "exit_seconds_after_signal": round(t_exit, 2)}
    (RESULTS / f"serve_shutdown{args.tag}.json").write_text(json.dumps(doc, indent=2) + "\n")
    md = (f"# sidkit serve: SIGTERM during a burst{args.tag}\n\nCommand: `{cmd}`\n\n"
          f"- {n} requests arriving at the signal: {dict(Counter(res))}\n"
          f"- {len(late)} requests on new connections 0.1 s after it: {dict(Counter(late))}\n"
          f"- exit code {rc}, {t_exit:.2f} s after the signal\n")
    (RESULTS / f"serve_shutdown{args.tag}.md").write_text(md)
    print(md)


def _synthetic_run(root: Path, n_items: int) -> tuple[Path, np.ndarray]:
    from add_items import build_run

    return build_run(root, n_items, 384, spare=512)       # room for several updates of 1,000 items


def _run_embeddings(run: Path) -> np.ndarray:
    f = run / "embeddings" / "embeddings.npy"
    if not f.is_file():
        raise SystemExit(f"--add-items needs the run's item embeddings ({f}); or pass RUN 'synthetic'")
    return np.load(f)


def _cli_update(url: str, run: Path, body: bytes) -> None:
    """The update of ``body`` made by ``sidkit add-items`` in its own process; returns once the
    server's /health shows the new items (its catalogue watcher took them in)."""
    import httpx

    items = json.loads(body)["items"]
    d = Path(tempfile.mkdtemp(prefix="sidkit-cli-add-"))
    (d / "new.jsonl").write_text("".join(json.dumps({"item_id": it["item_id"]}) + "\n" for it in items))
    np.save(d / "x.npy", np.asarray([it["embedding"] for it in items], np.float32))
    n0 = httpx.get(url + "/health", headers=auth_headers()).json()["n_items"]
    subprocess.run([sys.executable, "-c", "from sidkit.cli import main; main()", "add-items", str(run),
                    str(d / "new.jsonl"), "--embeddings", str(d / "x.npy")], check=True, capture_output=True)
    while httpx.get(url + "/health", headers=auth_headers()).json()["n_items"] < n0 + len(items):
        time.sleep(0.01)


async def _update_latency(url: str, hists: list[list[str]], conc: int, k: int, beam: int, seconds: float,
                          bodies: list[bytes], run: Path | None = None) -> dict:
    """Recommendations from ``conc`` raw connections for ``seconds`` with no update, then while
    the ``bodies`` are posted to /items one after another (1 s apart): each request's
    latency, tagged by whether it overlapped an update."""
    reqs = [json.dumps({"history": h, "k": k, "beam": beam}).encode() for h in hists]   # off the clock
    spans: list[tuple[float, float]] = []          # each update: sent, answered
    lat: list[tuple[float, float]] = []            # each recommendation: sent, answered
    errors: list[str] = []
    state = {"i": 0, "stop": False}

    async def worker():
        client = RawClient(url)
        while not state["stop"]:
            i = state["i"]
            state["i"] += 1
            t = time.perf_counter()
            status, body = await client.post("/recommend", reqs[i % len(reqs)])
            if status != 200:
                errors.append(f"{status}: {body[:200]!r}")
            lat.append((t, time.perf_counter()))
        await client.close()

    async def updater():
        await asyncio.sleep(seconds)
        client = RawClient(url)
        for body in bodies:
            t = time.perf_counter()
            if run is not None:                          # --via cli: sidkit add-items, the watcher takes it in
                await asyncio.to_thread(_cli_update, url, run, body)
                status, out = 200, b""
            else:
                status, out = await client.post("/items", body)
            spans.append((t, time.perf_counter()))
            if status != 200:
                errors.append(f"POST /items {status}: {out[:300]!r}")
            await asyncio.sleep(1.0)
        await client.close()
        state["stop"] = True

    await asyncio.gather(updater(), *(worker() for _ in range(conc)))
    t_first = spans[0][0] if spans else float("inf")
    idle = [b - a for a, b in lat if b < t_first]
    during = [b - a for a, b in lat if any(a < e and b > s for s, e in spans)]
    ms = lambda v, q: float(np.percentile(np.asarray(v) * 1e3, q)) if v else float("nan")  # noqa: E731
    return {"update_s": [e - s for s, e in spans], "errors": errors,
            "recommend_ms": {name: {"n": len(v), "p50": ms(v, 50), "p99": ms(v, 99), "max": ms(v, 100)}
                             for name, v in (("idle", idle), ("update", during))}}


def add_items_case(args) -> None:
    """``--add-items``: live catalogue updates against a served model in its own process."""
    import shutil

    tmp = Path(tempfile.mkdtemp(prefix="sidkit-serve-add-"))
    proc = None
    try:
        if str(args.run) == "synthetic":
            run, X = _synthetic_run(tmp, args.items)
            ids = [f"i{i:05d}" for i in range(args.items)]
            rng = np.random.default_rng(0)
            hists = [[ids[j] for j in rng.integers(len(ids), size=12)] for _ in range(256)]
        else:
            run = tmp / "run"                    # a copy: the run itself never gets the synthetic items
            shutil.copytree(args.run, run)
            X = _run_embeddings(run)
            hists = histories(run, n=256)
        rng = np.random.default_rng(1)
        bodies = []
        for u in range(args.updates):
            rows = rng.integers(len(X), size=args.add_items)
            E = X[rows] + 0.05 * rng.normal(size=(args.add_items, X.shape[1])).astype(np.float32)
            bodies.append(json.dumps({"items": [{"item_id": f"new{u}-{i}", "embedding": e.tolist()}
                                                for i, e in enumerate(E)]}).encode())
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(run, port, args)
        health = wait_ready(url, proc)
        info = machine()
        conc = int(args.concurrency.split(",")[0])
        asyncio.run(level_raw(url, hists, args.warmup, conc, args.k, args.beam, offset=0))
        res = asyncio.run(_update_latency(url, hists, conc, args.k, args.beam, args.seconds, bodies,
                                          run if args.via == "cli" else None))
        info["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)
    cmd = "python benchmarks/serve.py " + " ".join(sys.argv[1:])
    r = res["recommend_ms"]
    ratio = r["update"]["p99"] / r["idle"]["p99"]
    up = np.asarray(res["update_s"])
    doc = {"command": cmd, "machine": info, "server": health, "items": health["n_items"], "new": args.add_items,
           "updates": args.updates, "body_mb": len(bodies[0]) / 1e6, "concurrency": conc, **res,
           "p99_ratio": ratio}
    (RESULTS / f"serve_add_items{args.tag}.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# sidkit serve: POST /items during POST /recommend load{args.tag}", "", f"Command: `{cmd}`", "",
             f"{health['n_items']} items at start, {args.updates} updates of {args.add_items} items "
             f"({doc['body_mb']:.1f} MB of JSON each), {conc} recommendation requests in flight (k {args.k}, beam "
             f"{args.beam}); server torch threads {args.threads or 'default'}. Machine: {info['cpu']}, "
             f"{info['cores']} cores; load average at start {info.get('load_avg_at_start')}, at end "
             f"{info.get('load_avg_at_end')}.", "",
             "| recommendations | n | p50 ms | p99 ms | max ms |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {name} | {v['n']} | {v['p50']:.1f} | {v['p99']:.1f} | {v['max']:.1f} |" for name, v in r.items()]
    lines += ["", f"Update wall time (sent to answered): median {np.median(up):.3f} s, worst {up.max():.3f} s "
              f"(goal <= 1 s for 1,000 items: {'met' if up.max() <= 1 else 'not met'}).",
              f"p99 during updates / idle p99: {ratio:.2f}x (goal <= 2x: {'met' if ratio <= 2 else 'not met'}).",
              f"Errors: {len(res['errors'])}."]
    md = "\n".join(lines) + "\n"
    (RESULTS / f"serve_add_items{args.tag}.md").write_text(md)
    print(md)
    if res["errors"]:
        raise SystemExit(f"{len(res['errors'])} errors, e.g. {res['errors'][:3]}")


def model_only(args) -> None:
    """``--model-only``: the served model's batched beam search in-process, no HTTP
    (``ServedModel.recommend_batch`` on real histories), median of ``--repeat`` calls per
    batch size; ``--profile`` adds the torch profiler's top operators for the largest batch."""
    import torch

    from sidkit.serve.runtime import RecRequest, ServedModel

    if args.threads:
        torch.set_num_threads(args.threads)
    served = ServedModel(args.run, label=args.model, device=args.device)
    reqs = [RecRequest(served.index_of(h)[0], args.k, args.beam, None, args.mask_seen) for h in histories(args.run)]
    sizes = [int(b) for b in args.batches.split(",")]
    load0 = [round(v, 2) for v in os.getloadavg()]
    served.recommend_batch(reqs[:max(sizes)])                      # warm-up
    lines = [f"model-only ({served.label}, {served.device}, torch threads {torch.get_num_threads()}, "
             f"k {args.k}, beam {args.beam}, load average {load0}):", "",
             "| batch | ms per batch (median) | ms per user |", "|---:|---:|---:|"]
    for b in sizes:
        ts = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            served.recommend_batch(reqs[:b])
            ts.append(time.perf_counter() - t)
        m = float(np.median(ts)) * 1000
        lines.append(f"| {b} | {m:.1f} | {m / b:.2f} |")
    print("\n".join(lines))
    if args.profile:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU]) as prof:
            served.recommend_batch(reqs[:max(sizes)])
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", type=Path, help="run directory with a trained model (default: its causal SID model)")
    ap.add_argument("--model", default=None, help="model label to serve (e.g. sasrec, popularity; default: the "
                                                  "server's choice, the best causal SID model)")
    ap.add_argument("--mask-seen", action="store_true", help="requests with mask_seen: true")
    ap.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--beam", type=int, default=20)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: torch's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--url", default=None, help="an already running server on this machine (loopback only)")
    ap.add_argument("--tag", default="")
    ap.add_argument("--model-only", action="store_true", help="time the batched beam search in-process, no HTTP")
    ap.add_argument("--shutdown-burst", type=int, default=0, metavar="N",
                    help="SIGTERM while N requests arrive: how many are answered (200/503) or lost")
    ap.add_argument("--batches", default="1,8,32,64", help="--model-only: batch sizes")
    ap.add_argument("--repeat", type=int, default=5, help="--model-only: calls per batch size")
    ap.add_argument("--profile", action="store_true", help="--model-only: torch profiler of the largest batch")
    ap.add_argument("--client", choices=["httpx", "raw"], default="httpx",
                    help="load generator: httpx's AsyncClient, or a minimal keep-alive HTTP/1.1 client on asyncio "
                         "streams (far less CPU per request on the shared machine)")
    ap.add_argument("--in-process", action="store_true",
                    help="the load levels against the app in this process (httpx ASGI transport): no sockets, "
                         "no HTTP parsing, no second process")
    ap.add_argument("--add-items", type=int, default=0, metavar="N",
                    help="measure live updates: POST /items of N items while recommendations run")
    ap.add_argument("--updates", type=int, default=5, help="--add-items: how many updates")
    ap.add_argument("--via", choices=["http", "cli"], default="http",
                    help="--add-items: POST /items, or sidkit add-items in another process (the server's "
                         "catalogue watcher takes the items in; the update ends when /health shows them)")
    ap.add_argument("--items", type=int, default=1682, help="--add-items on RUN 'synthetic': catalogue size")
    ap.add_argument("--seconds", type=float, default=5.0, help="--add-items: idle seconds before the updates")
    args = ap.parse_args()
    if args.add_items:
        RESULTS.mkdir(exist_ok=True)
        add_items_case(args)
        return
    if args.model_only:
        model_only(args)
        return
    if args.shutdown_burst:
        shutdown_burst(args)
        return
    if args.in_process:
        info = machine()
        rows = in_process(args)
        info["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
        cmd = "python benchmarks/serve.py " + " ".join(sys.argv[1:])
        (RESULTS / f"serve{args.tag}.json").write_text(json.dumps({"command": cmd, "machine": info, "mode": "in-process",
                                                                   "levels": rows}, indent=2) + "\n")
        lines = [f"# sidkit serve in-process (ASGI transport, no sockets){args.tag}", "", f"Command: `{cmd}`", "",
                 f"Load average at start {info.get('load_avg_at_start')}, at end {info.get('load_avg_at_end')}.", "",
                 "| concurrency | requests | rec/s | p50 ms | p99 ms | mean batch | process CPU ms/req (server + client) "
                 "| errors |", "|---:|---:|---:|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['concurrency']} | {r['requests']} | {r['rec_per_s']:.1f} | {r['p50_ms']:.1f} | "
                  f"{r['p99_ms']:.1f} | {r['mean_batch'] or 0:.1f} | {r['client_cpu_ms_per_req']:.1f} | {r['errors']} |"
                  for r in rows]
        md = "\n".join(lines) + "\n"
        (RESULTS / f"serve{args.tag}.md").write_text(md)
        print(md)
        return
    if args.requests < 1 or args.requests > 100_000:
        raise SystemExit("--requests must lie in 1..100000 (a bounded load test)")
    RESULTS.mkdir(exist_ok=True)
    proc = None
    if args.url:
        host = urlparse(args.url).hostname
        if host not in LOOPBACK:
            raise SystemExit(f"--url must point at this machine (127.0.0.1), got host {host!r}")
        url = args.url.rstrip("/")
    else:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_server(args.run, port, args)
    try:
        t0 = time.time()
        health = wait_ready(url, proc)
        startup = time.time() - t0
        hists = histories(args.run)
        info = machine()
        run_level = level_raw if args.client == "raw" else level
        asyncio.run(run_level(url, hists, args.warmup, 4, args.k, args.beam, offset=len(hists) // 2,
                              mask_seen=args.mask_seen))
        pid = proc.pid if proc is not None else None
        rows = [asyncio.run(run_level(url, hists, args.requests, int(c), args.k, args.beam, offset=0, server_pid=pid,
                                      mask_seen=args.mask_seen))
                for c in args.concurrency.split(",")]
        info["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(60)
    cmd = "python benchmarks/serve.py " + " ".join(sys.argv[1:])
    doc = {"command": cmd, "machine": info, "server": health, "startup_s": startup,
           "settings": {"k": args.k, "beam": args.beam, "max_batch": args.max_batch,
                        "max_wait_ms": args.max_wait_ms, "threads": args.threads, "requests": args.requests,
                        "mask_seen": args.mask_seen},
           "levels": rows}
    (RESULTS / f"serve{args.tag}.json").write_text(json.dumps(doc, indent=2) + "\n")
    lines = [f"# sidkit serve: POST /recommend load test{args.tag}", "",
             f"Command: `{cmd}`", "",
             f"Model {health['model']} ({health['model_type']}, seed {health['seed']}) on {health['device']}, "
             f"{health['n_items']} items, SIDs of {health.get('n_levels')} tokens, history: last "
             f"{health['max_history_used']} items; k {args.k}, beam {args.beam}"
             f"{' (not used: the model scores every item)' if health.get('generative') is False else ''}"
             f"{', mask_seen' if args.mask_seen else ''}; batches of <= {args.max_batch} "
             f"requests, <= {args.max_wait_ms:g} ms wait; server torch threads "
             f"{args.threads or 'default'}; {args.requests} requests per level (closed loop, "
             f"{'a minimal asyncio HTTP/1.1 keep-alive client' if args.client == 'raw' else 'async httpx client'} "
             f"on the same machine).", "",
             f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}; load average at start "
             f"{info.get('load_avg_at_start')}, at end {info.get('load_avg_at_end')} (shared machine: other jobs ran).",
             "", "| concurrency | requests | rec/s | p50 ms | p99 ms | max ms | mean batch | server CPU ms/req "
             "| client CPU ms/req | errors |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        mb = f"{r['mean_batch']:.1f}" if r["mean_batch"] else ""
        sc = f"{r['server_cpu_ms_per_req']:.1f}" if r["server_cpu_ms_per_req"] is not None else ""
        lines.append(f"| {r['concurrency']} | {r['requests']} | {r['rec_per_s']:.1f} | {r['p50_ms']:.1f} | "
                     f"{r['p99_ms']:.1f} | {r['max_ms']:.1f} | {mb} | {sc} | {r['client_cpu_ms_per_req']:.1f} "
                     f"| {r['errors']} |")
    c1 = next((r for r in rows if r["concurrency"] == 1), None)
    c32 = next((r for r in rows if r["concurrency"] == 32), None)
    lines.append("")
    if c1:
        lines.append(f"Goal p99 < 100 ms at concurrency 1: {c1['p99_ms']:.1f} ms "
                     f"({'met' if c1['p99_ms'] < 100 else 'not met'}).")
    if c32:
        lines.append(f"Goal >= 200 rec/s at concurrency 32: {c32['rec_per_s']:.1f} "
                     f"({'met' if c32['rec_per_s'] >= 200 else 'not met'}).")
    md = "\n".join(lines) + "\n"
    (RESULTS / f"serve{args.tag}.md").write_text(md)
    print(md)
    errs = sum(r["errors"] for r in rows)
    if errs:
        print(f"{errs} requests failed, e.g. {[e for r in rows for e in r['error_examples']][:3]}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
