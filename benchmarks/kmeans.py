"""RQ-KMeans fit: sidkit vs faiss-cpu ``Kmeans`` per level, on two data distributions
and several sizes, repeated, interleaved in one process.

Usage::

    python benchmarks/kmeans.py --quick                   # 100k x 384, 3 repeats
    python benchmarks/kmeans.py --sizes 100000,1000000    # both sizes
    python benchmarks/kmeans.py --quick --profile         # + where sidkit's time goes

Every method fits 3 levels x 256 codewords (``--levels``, ``--k``): level ``l``
clusters the residuals of level ``l-1`` with ``--iters`` Lloyd iterations on a random
sample of ``256 * K`` points (faiss's ``max_points_per_centroid``), then assigns
**all** points and updates their residuals.  The time covers the whole fit
(sampling, init, iterations, assignment of all points, residual updates).

Data (``--dists``):

* ``blobs``: Gaussian blobs around 1000 centres, equal expected sizes, per-centre
  scale in [0.1, 0.6) (``_common.clustered``);
* ``zipf``: unit-normalised vectors around 1000 directions with Zipf-distributed
  cluster sizes (``_common.zipf_unit``), closer to text embeddings.

Methods:

* ``sidkit``: ``RQKMeans(codebook_sizes=[K]*L, n_iter=iters, resolve_collisions=False)
  .fit_encode(X)`` (bisecting init; stops a level early when the training labels stop
  changing);
* ``faiss``: ``faiss.Kmeans(d, K, niter=iters, max_points_per_centroid=256)`` per
  level (random init, always all iterations), ``index.search`` on all residuals and a
  chunked residual update.

The machine is shared (other jobs run on the same cores), so absolute times are
noisy: for every (size, distribution) the two methods run ``--repeat`` times,
interleaved in one process (the order alternates between repeats), and the report
gives the **median** and the **least favourable** (largest) ratio sidkit / faiss of
time and of final MSE over the paired repeats, with the load average (``uptime``)
before and after.  Peak memory: a thread samples this process's RSS every 2 ms
during each fit; *working* memory is the peak minus the RSS before the fit, reported
as ``(input + working) / input``.

``--profile`` also runs one sidkit fit under cProfile and reports the time per phase
(init, assignment, centroid update, repair, residual rows / materialisation).

Writes ``benchmarks/results/kmeans.json`` and ``kmeans.md``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

from _common import clustered, current_rss_mb, require_quiet, zipf_unit
from _common import machine as _machine

os.environ.setdefault("SIDKIT_NO_PROGRESS", "1")
RESULTS = Path(__file__).resolve().parent / "results"
DISTS = {"blobs": clustered, "zipf": zipf_unit}


def machine() -> dict:
    return _machine("faiss")


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


class PeakRSS:
    """Peak RSS (MB) of this process while the ``with`` block runs (2 ms sampling)."""

    def __enter__(self):
        self.before = current_rss_mb()
        self.peak = self.before
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._poll, daemon=True)
        self._t.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_mb())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, current_rss_mb())
        return False


def final_mse(X: np.ndarray, Xhat_chunks) -> float:
    tot = 0.0
    for s, xh in Xhat_chunks:
        r = X[s:s + len(xh)] - xh
        tot += float(np.einsum("ij,ij->", r, r, dtype=np.float64))
    return tot / len(X)


# ------------------------------------------------------------------ methods
def run_sidkit(X: np.ndarray, k: int, levels: int, iters: int, seed: int) -> dict:
    from sidkit.tokenizers import RQKMeans

    tok = RQKMeans(codebook_sizes=[k] * levels, n_iter=iters, max_points_per_centroid=256,
                   resolve_collisions=False, random_state=seed, device="cpu")
    gc.collect()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        codes = tok.fit_encode(X)
        dt = time.perf_counter() - t0
    c = codes.codes
    mse = final_mse(X, ((s, tok.decode(c[s:s + 100_000])) for s in range(0, len(X), 100_000)))
    return {"seconds": dt, "mse": mse, "level_mse": tok.fit_stats_["level_mse"],
            "n_iter": tok.fit_stats_["n_iter"], "working_mb": mem.peak - mem.before}


def run_faiss(X: np.ndarray, k: int, levels: int, iters: int, seed: int) -> dict:
    import faiss

    n, d = X.shape
    gc.collect()
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        R = X.copy()  # the residual (faiss's Kmeans needs a materialised array)
        level_mse = []
        for l in range(levels):
            km = faiss.Kmeans(d, k, niter=iters, seed=seed + l, max_points_per_centroid=256,
                              verbose=False)
            km.train(R)
            _, I = km.index.search(R, 1)
            I = I[:, 0]
            for s in range(0, n, 100_000):  # chunked residual update (no N x d temporary)
                R[s:s + 100_000] -= km.centroids[I[s:s + 100_000]]
            level_mse.append(float(np.einsum("ij,ij->", R, R, dtype=np.float64) / n))
        dt = time.perf_counter() - t0
    del R
    return {"seconds": dt, "mse": level_mse[-1], "level_mse": level_mse,
            "n_iter": [iters] * levels, "working_mb": mem.peak - mem.before}


METHODS = {"sidkit": run_sidkit, "faiss": run_faiss}


# ------------------------------------------------------------------ profile
PHASES = [  # (phase, functions whose cumulative time it is), first match wins
    ("init (bisecting on the sample)", ("_bisecting",)),
    ("init (k-means++)", ("_kmeanspp",)),
    ("empty-cluster repair", ("_repair_empty",)),
    ("centroid update", ("_update_centroids",)),
    ("assignment (GEMM + argmin)", ("_assign_t",)),
    ("residual rows (sample / materialise)", ("__getitem__", "to")),
    ("total variance", ("_total_variance",)),
    ("collision index + stats", ("fit", "collision_stats", "_level_stats")),
]


def profile_sidkit(X: np.ndarray, k: int, levels: int, iters: int, seed: int) -> dict:
    """Seconds per phase of one sidkit fit (cProfile cumulative times of the phase's
    sidkit functions, outermost call only)."""
    import cProfile
    import pstats

    from sidkit.tokenizers import RQKMeans

    tok = RQKMeans(codebook_sizes=[k] * levels, n_iter=iters, resolve_collisions=False,
                   random_state=seed, device="cpu")
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    tok.fit_encode(X)
    prof.disable()
    total = time.perf_counter() - t0
    st = pstats.Stats(prof).stats  # (file, line, name) -> (cc, nc, tt, ct, callers)
    out = {}
    for phase, names in PHASES:
        sec = 0.0
        for (fname, _, func), (_, _, _, ct, callers) in st.items():
            if "sidkit" not in fname or func not in names:
                continue
            if phase.startswith("residual") and "rq.py" not in fname:
                continue
            if phase.startswith("collision") and "collisions" not in fname and func != "_level_stats":
                continue
            # count only calls not made from another function of the same phase
            if any(c[2] in names and "sidkit" in c[0] for c in callers):
                continue
            sec += ct
        out[phase] = sec
    out["total (profiled)"] = total
    out["other"] = total - sum(v for kk, v in out.items() if kk != "total (profiled)")
    return out


# ------------------------------------------------------------------ driver
def ratios(runs: dict, name: str = "sidkit") -> dict:
    pairs = [(a, b) for a, b in zip(runs[name], runs["faiss"])]
    t = [a["seconds"] / b["seconds"] for a, b in pairs]
    m = [a["mse"] / b["mse"] for a, b in pairs]
    return {"time_median": statistics.median(t), "time_worst": max(t),
            "mse_median": statistics.median(m), "mse_worst": max(m),
            "time_all": t, "mse_all": m}


def to_markdown(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    lines = [
        "# RQ-KMeans fit benchmark: sidkit vs faiss",
        "",
        *([f"**{report['load_warning']}**", ""] if report.get("load_warning") else []),
        f"Machine: {m.get('cpu')} ({m.get('cores')} cores, load average at start "
        f"{m.get('load_avg_at_start')}, torch "
        f"{m.get('torch')} with {m.get('torch_threads')} threads, faiss {m.get('faiss')} with "
        f"{m.get('faiss_threads')} threads).",
        "",
        f"{cfg['levels']} levels x {cfg['k']} codewords, {cfg['iters']} Lloyd iterations, "
        f"training sample 256 x K per level, {cfg['repeat']} interleaved repeats per case.",
        f"Command: `{cfg['command']}`",
        "",
        "Ratios are sidkit / faiss over paired repeats (< 1: sidkit faster or lower MSE); "
        "*worst* is the least favourable repeat.",
        "",
        "| data | n x d | time ratio median | time ratio worst | MSE ratio median "
        "| MSE ratio worst | sidkit s (median) | faiss s (median) | (input + working) / input "
        "sidkit / faiss | load avg before -> after |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|---|",
    ]
    for case in report["cases"]:
        r = case["ratios"]
        s = statistics.median(x["seconds"] for x in case["runs"]["sidkit"])
        f = statistics.median(x["seconds"] for x in case["runs"]["faiss"])
        inp = case["input_mb"]
        ms = max(x["working_mb"] for x in case["runs"]["sidkit"])
        mf = max(x["working_mb"] for x in case["runs"]["faiss"])
        lines.append(
            f"| {case['dist']} | {case['n']} x {case['dim']} | {r['time_median']:.2f} | "
            f"{r['time_worst']:.2f} | {r['mse_median']:.3f} | {r['mse_worst']:.3f} | "
            f"{s:.1f} | {f:.1f} | {(inp + ms) / inp:.2f} / {(inp + mf) / inp:.2f} | "
            f"{case['load_before']} -> {case['load_after']} |")
    lines += ["", "Per-level MSE (first repeat):", ""]
    for case in report["cases"]:
        for name in ("sidkit", "faiss"):
            r = case["runs"][name][0]
            lines.append(f"- {case['dist']} {case['n']}: {name} "
                         f"{', '.join(f'{v:.4f}' for v in r['level_mse'])} "
                         f"(iterations {r['n_iter']})")
    if report.get("profile"):
        lines += ["", "Where sidkit's fit time goes (one run under cProfile, "
                  f"{report['profile']['case']}):", "",
                  "| phase | seconds | share |", "|---|---:|---:|"]
        prof = report["profile"]["seconds"]
        tot = prof["total (profiled)"]
        for k, v in prof.items():
            if k != "total (profiled)":
                lines.append(f"| {k} | {v:.2f} | {v / tot:.0%} |")
        lines.append(f"| total (profiled) | {tot:.2f} | 100% |")
    lines += ["", "Notes: faiss initialises with K random training points (its CPU "
              "default); sidkit's bisecting init is included in its time.  faiss always "
              "runs all iterations; sidkit stops a level once the training labels stop "
              "changing.  MSE is the mean squared norm of the final residual over all "
              "points.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000", help="comma-separated numbers of rows")
    ap.add_argument("--quick", action="store_true", help="--sizes 100000")
    ap.add_argument("--dists", default="blobs,zipf")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=3, help="interleaved repeats per case")
    ap.add_argument("--profile", action="store_true", help="profile one sidkit fit (smallest size, first distribution)")
    ap.add_argument("--out", default=str(RESULTS), help="directory for kmeans.json / kmeans.md")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--allow-load", action="store_true",
                    help="measure even when the load average is above 0.5 per core (the report says so)")
    args = ap.parse_args()
    sizes = [100_000] if args.quick else [int(s) for s in args.sizes.split(",")]
    dists = args.dists.split(",")
    for dname in dists:
        if dname not in DISTS:
            raise SystemExit(f"unknown distribution {dname!r}; use {', '.join(DISTS)}")
    methods = ["sidkit", "faiss"]
    warning = require_quiet(args.allow_load)
    report = {"machine": machine(), "load_warning": warning,
              "config": {"sizes": sizes, "dists": dists, "dim": args.dim, "k": args.k,
                         "levels": args.levels, "iters": args.iters, "seed": args.seed,
                         "repeat": args.repeat,
                         "command": "python benchmarks/kmeans.py " + " ".join(sys.argv[1:])},
              "cases": []}
    # import both libraries before any measurement
    import faiss  # noqa: F401
    import torch  # noqa: F401

    import sidkit.tokenizers  # noqa: F401
    for n in sizes:
        for dname in dists:
            X = DISTS[dname](n, args.dim, seed=args.seed)
            case = {"dist": dname, "n": n, "dim": args.dim, "input_mb": X.nbytes / 2**20,
                    "load_before": load_avg(), "runs": {m: [] for m in methods}}
            print(f"{dname} {n} x {args.dim} (load {case['load_before']})", flush=True)
            for rep in range(max(1, args.repeat)):
                order = tuple(methods) if rep % 2 == 0 else tuple(reversed(methods))
                for name in order:
                    res = METHODS[name](X, args.k, args.levels, args.iters, args.seed + rep)
                    case["runs"][name].append(res)
                    print(f"  rep {rep} {name:7s} {res['seconds']:7.2f} s  mse {res['mse']:.5f}  "
                          f"working {res['working_mb']:.0f} MB  load {load_avg()}", flush=True)
            case["load_after"] = load_avg()
            case["ratios"] = ratios(case["runs"])
            r = case["ratios"]
            print(f"  time sidkit/faiss median {r['time_median']:.2f} worst {r['time_worst']:.2f}; "
                  f"mse median {r['mse_median']:.3f} worst {r['mse_worst']:.3f}", flush=True)
            report["cases"].append(case)
            if args.profile and n == sizes[0] and dname == dists[0]:
                prof = profile_sidkit(X, args.k, args.levels, args.iters, args.seed)
                report["profile"] = {"case": f"{dname} {n} x {args.dim}", "seconds": prof}
                for k, v in prof.items():
                    print(f"  profile {k:40s} {v:6.2f} s", flush=True)
            del X
            gc.collect()
    if not args.no_write:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "kmeans.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "kmeans.md").write_text(to_markdown(report))
        print(f"wrote {out / 'kmeans.json'} and kmeans.md")


if __name__ == "__main__":
    main()
