"""How long adding items to a served SID model takes, and what it does to latency (issue 25).

Usage::

    python benchmarks/add_items.py [--items 1682] [--new 1000] [--dim 384] [--seconds 4] [--threads 1]

Builds a synthetic run directory of the layout ``sidkit serve`` reads (no training: an
untrained causal SID model of the default size -- hidden 128, 2 layers, max_len 20 --
whose weights do not matter for timing): ``--items`` clustered random embeddings of
``--dim`` dimensions, RQ-KMeans 16 x 16 + TIGER's disambiguation level with 64 spare
tokens (room for new items), the model, its ``metrics.json``.  Then, in this process:

1. ``ServedModel.add_items`` of ``--new`` items with precomputed embeddings (near
   catalogue items, so they crowd existing SID groups): ``encode_new``, the checks,
   ``add_items``, the atomic write of ``RUN/catalogue`` and the trie prebuild -- timed
   end to end, 3 times on fresh copies;
2. ``POST /recommend`` latency (k 10, beam 20) from 4 client threads through the whole app
   (starlette's TestClient: no sockets) for ``--seconds`` without an update ("idle"), then
   while one ``POST /items`` adds ``--new`` items ("update": the requests sent during it),
   then ``--seconds`` more ("after": the larger catalogue); p50 / p99 / max of each.

Prints a table and writes ``benchmarks/results/add_items.json``.  The load average at
start and end is recorded (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np


def build_run(root: Path, n_items: int, dim: int, seed: int = 0, spare: int = 64) -> tuple[Path, np.ndarray]:
    import torch

    from sidkit.eval import SequenceData
    from sidkit.io import write_json
    from sidkit.models import CausalSID
    from sidkit.tokenizers import RQKMeans

    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(64, dim))
    X = (centers[rng.integers(64, size=n_items)] + 0.5 * rng.normal(size=(n_items, dim))).astype(np.float32)
    ids = np.array(sorted(f"i{i:05d}" for i in range(n_items)))
    tok = RQKMeans(codebook_sizes=[16, 16], resolve_collisions=True, random_state=0, device="cpu")
    codes = tok.fit_encode(X).replace(item_ids=ids)
    sizes = list(codes.codebook_sizes)
    sizes[-1] += spare                                     # room for new items in the last level
    codes = codes.replace(codebook_sizes=tuple(sizes))
    run = root / "run"
    (run / "codes").mkdir(parents=True)
    tok.save(run / "codes" / "tokenizer")
    codes.save(run / "codes" / "codes")
    write_json(run / "embeddings" / "embeddings.json", {"source": "file", "dim": dim})
    users = np.array([f"u{u}" for u in range(50)])
    seqs = rng.integers(n_items, size=(50, 12))
    data = SequenceData(ids, users, (seqs + 1).ravel().astype(np.int64), np.arange(0, 50 * 12 + 1, 12),
                        np.tile(np.r_[np.zeros(10), 1, 2].astype(np.int8), 50))
    m = CausalSID(max_len=20)
    m._set_catalogue(data)
    m.tokens_ = m._resolve_tokens(data, codes)
    m.device_ = torch.device("cpu")
    torch.manual_seed(0)
    m.module_ = m.build_module(n_items).eval()
    m.history_ = []
    m.best_epoch_ = 0
    m.save(run / "recommender" / "models" / "causal_sid" / "seed-0")
    write_json(run / "recommender" / "metrics.json", {
        "labels": ["causal_sid"], "models": {"causal_sid": {"model": {"type": "causal_sid"}}},
        "records": [{"label": "causal_sid", "seed": 0, "tokenizer": "rqkmeans", "valid": {"ndcg@10": 0.0}}],
        "summary": {}})
    return run, X


def pct(a, q):
    return float(np.percentile(np.asarray(a) * 1e3, q)) if len(a) else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=1682)
    ap.add_argument("--new", type=int, default=1000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from fastapi.testclient import TestClient

    from sidkit.serve import create_app
    from sidkit.serve.runtime import ServedModel

    load0 = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="sidkit-add-"))
    try:
        base, X = build_run(tmp, args.items, args.dim)
        rng = np.random.default_rng(1)

        def new_batch(tag):
            rows = rng.integers(args.items, size=args.new)
            E = X[rows] + 0.05 * rng.normal(size=(args.new, args.dim)).astype(np.float32)
            return [f"{tag}-{i}" for i in range(args.new)], E

        # 1. the update alone
        add_s = []
        for rep in range(3):
            run = tmp / f"copy{rep}"
            shutil.copytree(base, run)
            s = ServedModel(run, device="cpu")
            ids, E = new_batch(f"a{rep}")
            t0 = time.perf_counter()
            out = s.add_items(ids, embeddings=E)
            add_s.append(time.perf_counter() - t0)
            assert out["added"] == args.new and s.n_items == args.items + args.new
        # 2. latency with and without an update in flight
        run = tmp / "served"
        shutil.copytree(base, run)
        lat = {"idle": [], "update": [], "after": []}
        updates = []
        with TestClient(create_app(run, device="cpu", text_model="off")) as c:
            hist = [f"i{i:05d}" for i in range(0, 5 * 37, 37)]
            for _ in range(5):
                c.post("/recommend", json={"history": hist, "k": 10, "beam": 20})
            phase = {"name": "idle"}
            stop = threading.Event()

            def client():
                while not stop.is_set():
                    t0 = time.perf_counter()
                    r = c.post("/recommend", json={"history": hist, "k": 10, "beam": 20})
                    dt = time.perf_counter() - t0
                    assert r.status_code == 200, r.text
                    lat[phase["name"]].append(dt)

            ths = [threading.Thread(target=client) for _ in range(4)]
            for t in ths:
                t.start()
            time.sleep(args.seconds)
            ids, E = new_batch("u")
            body = json.dumps({"items": [{"item_id": i, "embedding": e.tolist()} for i, e in zip(ids, E)]}).encode()
            phase["name"] = "update"                 # requests sent while the one update runs
            t0 = time.perf_counter()
            r = c.post("/items", content=body, headers={"content-type": "application/json"})
            updates.append(time.perf_counter() - t0)
            phase["name"] = "after"
            assert r.status_code == 200, r.text[:300]
            time.sleep(args.seconds)
            stop.set()
            for t in ths:
                t.join()
        res = {"body_mb": len(body) / 1e6, "items": args.items, "new": args.new, "dim": args.dim, "threads": args.threads,
               "add_items_s": add_s, "http_post_items_s": updates,
               "recommend_ms": {p: {"n": len(v), "p50": pct(v, 50), "p99": pct(v, 99), "max": pct(v, 100)}
                                for p, v in lat.items()},
               "loadavg_start": load0, "loadavg_end": os.getloadavg()}
        out = Path(__file__).parent / "results" / "add_items.json"
        out.parent.mkdir(exist_ok=True)
        out.write_text(json.dumps(res, indent=1))
        print(json.dumps(res, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
