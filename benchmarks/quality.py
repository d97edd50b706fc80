"""Tokenizer quality on real text embeddings (MovieLens-100K): sidkit's default
RQ-KMeans vs residual scikit-learn ``KMeans(n_init=10)`` at equal K, plus RQ-VAE.

Usage::

    python benchmarks/quality.py --emb run-ml100k/embeddings/embeddings.npy
    python benchmarks/quality.py --compute          # embed ML-100K offline (sidkit's
                                                    # data + TextEmbedder, SIDKIT_HOME)
    python benchmarks/quality.py --emb E.npy --sizes 24 --rqvae-sizes ''

For each codebook size K (default 24, 64 and 256 per level; 24 is sidkit's default
for 1,682 items), 3 levels:

* ``sidkit``: ``RQKMeans(codebook_sizes=[K]*3, resolve_collisions=False)`` with every
  other parameter at its default, seeds ``0..--seeds-1`` (each reported; the table
  shows seed 0 and the worst seed);
* ``sklearn``: residual ``sklearn.cluster.KMeans(K, n_init=10, random_state=0)``
  (all other parameters default: k-means++ init, up to 300 Lloyd iterations) fitted
  level by level on the residuals, as the scikit-learn-based ``semantic-id`` does;
* ``rqvae``: ``RQVAE(codebook_sizes=[K]*3, resolve_collisions=False)`` with default
  training parameters, at ``--rqvae-sizes`` (default 24, the default size; measured
  only).

Reported per method and K: per-level perplexity (``exp`` of the entropy of the token
usage; K = all codes used equally), the largest share of items in one code per
level, the **semantic collision rate** (``(N - distinct) / N`` over the first 3
tokens, i.e. before any disambiguation token; and the share of items whose 3-token
SID is shared), the final reconstruction MSE (``||x - decode||^2`` for the residual
methods; RQ-VAE reconstructs through its decoder), and the fit time.  Writes
``benchmarks/results/quality.json`` and ``quality.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from _common import machine as _machine

os.environ.setdefault("SIDKIT_NO_PROGRESS", "1")
RESULTS = Path(__file__).resolve().parent / "results"


def ml100k_embeddings() -> np.ndarray:
    """ML-100K item embeddings the way ``sidkit run`` computes them (default config,
    offline data and model; SIDKIT_HOME holds the cache)."""
    from sidkit.config import EmbedConfig
    from sidkit.data import item_texts, load_dataset
    from sidkit.embed import TextEmbedder

    e = EmbedConfig()
    ds = load_dataset("ml-100k")
    texts = item_texts(ds.items, e.template)
    return TextEmbedder(e.model, e.batch_size, e.normalize, "cpu").embed(texts)


def level_metrics(codes: np.ndarray, k: int) -> dict:
    from sidkit.tokenizers.collisions import collision_stats
    from sidkit.tokenizers.base import perplexity

    n, L = codes.shape
    cs = collision_stats(codes)
    return {
        "perplexity": [perplexity(codes[:, l], k) for l in range(L)],
        "max_share": [float(np.bincount(codes[:, l], minlength=k).max() / n) for l in range(L)],
        "used": [int(np.unique(codes[:, l]).size) for l in range(L)],
        "semantic_collision_rate": cs["collision_rate"],
        "items_in_semantic_collision": cs["items_in_collision"],
        "largest_group": cs["largest_group"],
    }


def run_sidkit(X: np.ndarray, k: int, seed: int) -> dict:
    from sidkit.tokenizers import RQKMeans

    tok = RQKMeans(codebook_sizes=[k] * 3, resolve_collisions=False, random_state=seed)
    t0 = time.perf_counter()
    codes = tok.fit_encode(X).codes[:, :3]
    dt = time.perf_counter() - t0
    mse = float(((X - tok.decode(codes)) ** 2).sum(1).mean())
    return {"seconds": dt, "mse": mse, **level_metrics(codes, k)}


def run_sklearn(X: np.ndarray, k: int, seed: int) -> dict:
    from sklearn.cluster import KMeans

    t0 = time.perf_counter()
    R = X.astype(np.float32).copy()
    codes = []
    for _ in range(3):
        km = KMeans(k, n_init=10, random_state=seed).fit(R)
        R -= km.cluster_centers_.astype(np.float32)[km.labels_]
        codes.append(km.labels_.astype(np.int64))
    dt = time.perf_counter() - t0
    codes = np.stack(codes, 1)
    return {"seconds": dt, "mse": float((R ** 2).sum(1).mean()), **level_metrics(codes, k)}


def run_rqvae(X: np.ndarray, k: int, seed: int) -> dict:
    from sidkit.tokenizers import RQVAE

    tok = RQVAE(codebook_sizes=[k] * 3, resolve_collisions=False, random_state=seed, device="cpu")
    t0 = time.perf_counter()
    codes = tok.fit_encode(X).codes[:, :3]
    dt = time.perf_counter() - t0
    mse = float(((X - tok.decode(codes)) ** 2).sum(1).mean())
    return {"seconds": dt, "mse": mse, **level_metrics(codes, k)}


def fmt(v: list, p: int = 1) -> str:
    return ", ".join(f"{x:.{p}f}" for x in v)


def to_markdown(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    lines = [
        "# Tokenizer quality on MovieLens-100K text embeddings",
        "",
        f"Embeddings: {cfg['source']} ({cfg['n']} x {cfg['dim']}). Machine: {m.get('cpu')} "
        f"({m.get('cores')} cores shared with other jobs, torch {m.get('torch')}, scikit-learn "
        f"{m.get('sklearn')}); load average {cfg['load_before']} -> {cfg['load_after']}.",
        f"Command: `{cfg['command']}`",
        "",
        "3 levels of K codes each.  Semantic collisions are counted on the first 3 tokens "
        "(before any disambiguation token): rate = (N - distinct SIDs) / N; *in coll.* = "
        "share of items whose SID another item also has.  *max share* = largest fraction of "
        "the items in one code of that level.",
        "",
        "| K | method | perplexity per level | max share per level | semantic collision rate "
        "| items in coll. | largest group | MSE | fit s |",
        "|---:|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for row in report["rows"]:
        r = row["result"]
        lines.append(
            f"| {row['k']} | {row['method']} | {fmt(r['perplexity'])} | {fmt(r['max_share'], 3)} | "
            f"{r['semantic_collision_rate']:.3f} | {r['items_in_semantic_collision']:.3f} | "
            f"{r['largest_group']} | {r['mse']:.4f} | {r['seconds']:.2f} |")
    lines += ["", "Goal check (sidkit vs scikit-learn, same K):", ""]
    for k, g in report["goals"].items():
        lines.append(
            f"- K={k}: every level's perplexity >= scikit-learn's: {g['perplexity_ok']} "
            f"(worst seed); semantic collision rate <= scikit-learn's: {g['collisions_ok']} "
            f"(worst seed {g['sidkit_worst_collision_rate']:.3f} vs {g['sklearn_collision_rate']:.3f}); "
            f"time ratio sidkit / scikit-learn {g['time_ratio']:.3f}; "
            f"MSE ratio sidkit / scikit-learn {g['mse_ratio']:.3f}")
    lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--emb", default=None, help="(N, d) float32 .npy of item embeddings")
    ap.add_argument("--compute", action="store_true", help="embed MovieLens-100K offline")
    ap.add_argument("--sizes", default="24,64,256")
    ap.add_argument("--seeds", type=int, default=3, help="sidkit seeds per K")
    ap.add_argument("--no-sklearn", action="store_true")
    ap.add_argument("--rqvae-sizes", default="24",
                    help="codebook sizes at which RQ-VAE is measured ('' = skip; 24 = its "
                         "default for 1,682 items)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.emb:
        X = np.load(args.emb).astype(np.float32)
        source = Path(args.emb).name
    elif args.compute:
        X = ml100k_embeddings()
        source = "MovieLens-100K via sidkit's default embedding (computed)"
    else:
        raise SystemExit("pass --emb PATH.npy or --compute")
    import torch  # noqa: F401

    import sidkit.tokenizers  # noqa: F401

    cfg = {"source": source, "n": int(X.shape[0]), "dim": int(X.shape[1]),
           "sizes": [int(k) for k in args.sizes.split(",")], "seeds": args.seeds,
           "load_before": [round(v, 2) for v in os.getloadavg()],
           "command": "python benchmarks/quality.py " + " ".join(sys.argv[1:])}
    report = {"machine": _machine("sklearn"), "config": cfg, "rows": [], "goals": {}}

    def write() -> None:  # after every step, so a partial run keeps its figures
        cfg["load_after"] = [round(v, 2) for v in os.getloadavg()]
        if args.no_write:
            return
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "quality.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "quality.md").write_text(to_markdown(report))

    for k in cfg["sizes"]:
        runs = {}
        for seed in range(args.seeds):
            r = run_sidkit(X, k, seed)
            runs.setdefault("sidkit", []).append(r)
            report["rows"].append({"k": k, "method": f"sidkit RQKMeans (seed {seed})", "result": r})
            print(f"K={k} sidkit seed {seed}: pp {fmt(r['perplexity'])} coll "
                  f"{r['semantic_collision_rate']:.3f} mse {r['mse']:.4f} {r['seconds']:.2f}s",
                  flush=True)
        if not args.no_sklearn:
            r = run_sklearn(X, k, 0)
            runs["sklearn"] = [r]
            report["rows"].append({"k": k, "method": "scikit-learn KMeans(n_init=10)", "result": r})
            print(f"K={k} sklearn: pp {fmt(r['perplexity'])} coll {r['semantic_collision_rate']:.3f} "
                  f"mse {r['mse']:.4f} {r['seconds']:.2f}s", flush=True)
            s = runs["sidkit"]
            report["goals"][k] = {
                "perplexity_ok": all(min(x["perplexity"][l] for x in s) >= r["perplexity"][l]
                                     for l in range(3)),
                "collisions_ok": max(x["semantic_collision_rate"] for x in s)
                <= r["semantic_collision_rate"],
                "sidkit_worst_collision_rate": max(x["semantic_collision_rate"] for x in s),
                "sklearn_collision_rate": r["semantic_collision_rate"],
                "time_ratio": float(np.median([x["seconds"] for x in s])) / r["seconds"],
                "mse_ratio": s[0]["mse"] / r["mse"],
            }
        write()
    # RQ-VAE trains a network (minutes per size on a busy CPU): the sizes asked for
    for k in [int(v) for v in args.rqvae_sizes.split(",") if v]:
        r = run_rqvae(X, k, 0)
        report["rows"].append({"k": k, "method": "sidkit RQVAE (defaults)", "result": r})
        print(f"K={k} rqvae: pp {fmt(r['perplexity'])} coll {r['semantic_collision_rate']:.3f} "
              f"mse {r['mse']:.4f} {r['seconds']:.2f}s", flush=True)
        write()
    if not args.no_write:
        print(f"wrote {Path(args.out) / 'quality.json'} and quality.md")


if __name__ == "__main__":
    main()
