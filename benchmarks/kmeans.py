"""RQ-KMeans fit: sidkit vs faiss-cpu ``Kmeans`` per level vs scikit-learn ``KMeans``.

Usage::

    python benchmarks/kmeans.py --quick              # 100k x 384
    python benchmarks/kmeans.py --n 1000000 --dim 384
    python benchmarks/kmeans.py --quick --full       # also fit on all points

Every method fits 3 levels x 256 codewords (``--levels``, ``--k``) on synthetic
clustered float32 data: level ``l`` clusters the residuals of level ``l-1`` with
``--iters`` Lloyd iterations on a random sample of ``256 * K`` points (faiss's
``max_points_per_centroid``), then assigns **all** points and updates their
residuals.  The time covers the whole fit (sampling, init, iterations, assignment of
all points, residual updates), not data generation.

* ``sidkit``: ``RQKMeans(codebook_sizes=[K]*L, resolve_collisions=False)``,
  greedy k-means++ init on ``max(64 K, 10000)`` sampled points.
* ``faiss``: ``faiss.Kmeans(d, K, niter, max_points_per_centroid=256)`` per level,
  ``index.search`` on all residuals.  faiss initialises with K random training points
  (its only CPU init); our k-means++ is included in our time, so the comparison
  favours faiss on init.  faiss always runs all iterations; sidkit stops early when
  the training labels stop changing.
* ``sklearn``: ``KMeans(K, init="k-means++", n_init=1, max_iter=iters, algorithm="lloyd")``
  trained on the same sampled size, then ``predict`` on all points -- on
  ``--sklearn-n`` points (default: all up to 200k), with sidkit re-timed on that
  same subset for the ratio.
* ``sidkit_full`` (``--full``): sidkit training on all points (no sampling).

Each method runs in its own subprocess (``resource.getrusage`` peak RSS is
per-process); peak memory is reported as a multiple of the input array's bytes.
Writes ``benchmarks/results/kmeans.json`` and ``kmeans.md`` with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import clustered, current_rss_mb, peak_rss_mb
from _common import machine as _machine

os.environ.setdefault("SIDKIT_NO_PROGRESS", "1")
RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    return _machine("faiss", "sklearn")


# ------------------------------------------------------------------ workers
def run_sidkit(X: np.ndarray, k: int, levels: int, iters: int, full: bool, seed: int) -> dict:
    from sidkit.tokenizers import RQKMeans

    tok = RQKMeans(codebook_sizes=[k] * levels, n_iter=iters,
                   max_points_per_centroid=None if full else 256,
                   resolve_collisions=False, random_state=seed, device="cpu")
    t0 = time.perf_counter()
    codes = tok.fit_encode(X)
    dt = time.perf_counter() - t0
    peak = peak_rss_mb()
    # MSE from a chunked decode (after the timing and the peak)
    mse = 0.0
    for s in range(0, len(X), 100_000):
        r = X[s:s + 100_000] - tok.decode(codes.codes[s:s + 100_000])
        mse += float(np.einsum("ij,ij->", r, r, dtype=np.float64))
    return {"seconds": dt, "mse": mse / len(X), "level_mse": tok.fit_stats_["level_mse"],
            "n_iter": tok.fit_stats_["n_iter"], "peak_rss_mb": peak}


def run_faiss(X: np.ndarray, k: int, levels: int, iters: int, seed: int) -> dict:
    import faiss

    n, d = X.shape
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
    return {"seconds": dt, "mse": level_mse[-1], "level_mse": level_mse, "n_iter": [iters] * levels,
            "peak_rss_mb": peak_rss_mb()}


def run_sklearn(X: np.ndarray, k: int, levels: int, iters: int, seed: int) -> dict:
    from sklearn.cluster import KMeans

    n, d = X.shape
    rs = np.random.default_rng(seed)
    t0 = time.perf_counter()
    R = X.copy()
    level_mse, n_iter = [], []
    for l in range(levels):
        m = min(n, 256 * k)
        idx = np.sort(rs.choice(n, size=m, replace=False)) if m < n else np.arange(n)
        km = KMeans(k, init="k-means++", n_init=1, max_iter=iters, algorithm="lloyd",
                    random_state=seed + l).fit(R[idx])
        lab = km.predict(R)
        C = km.cluster_centers_.astype(np.float32)
        for s in range(0, n, 100_000):
            R[s:s + 100_000] -= C[lab[s:s + 100_000]]
        level_mse.append(float(np.einsum("ij,ij->", R, R, dtype=np.float64) / n))
        n_iter.append(int(km.n_iter_))
    dt = time.perf_counter() - t0
    return {"seconds": dt, "mse": level_mse[-1], "level_mse": level_mse, "n_iter": n_iter,
            "peak_rss_mb": peak_rss_mb()}


def worker(args) -> None:
    if args.subset:  # read only the subset (a full load would dominate the peak RSS)
        X = np.array(np.load(args.data, mmap_mode="r")[: args.subset], copy=True)
    else:
        X = np.load(args.data)
    # import the method's libraries first: the baseline covers runtime + input
    if args.method.startswith("sidkit"):
        import scipy.sparse  # noqa: F401
        import torch  # noqa: F401  (sidkit imports it lazily)

        import sidkit.tokenizers  # noqa: F401
    elif args.method == "faiss":
        import faiss  # noqa: F401
    else:
        import sklearn.cluster  # noqa: F401
    base = current_rss_mb()
    if args.method == "sidkit":
        out = run_sidkit(X, args.k, args.levels, args.iters, False, args.seed)
    elif args.method == "sidkit_full":
        out = run_sidkit(X, args.k, args.levels, args.iters, True, args.seed)
    elif args.method == "faiss":
        out = run_faiss(X, args.k, args.levels, args.iters, args.seed)
    elif args.method == "sklearn":
        out = run_sklearn(X, args.k, args.levels, args.iters, args.seed)
    else:
        raise SystemExit(f"unknown method {args.method}")
    inp = X.nbytes / 2**20
    work = max(out["peak_rss_mb"] - base, 0.0)
    # peak / input = (input + working memory of the fit) / input; the Python/torch
    # runtime present before the fit is excluded (it does not scale with N)
    out.update(n=int(X.shape[0]), rss_before_fit_mb=base, input_mb=inp, working_mb=work,
               peak_over_input=(inp + work) / inp)
    print("RESULT " + json.dumps(out), flush=True)


def spawn(method: str, data: str, args, subset: int = 0) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--data", data, "--k", str(args.k),
           "--levels", str(args.levels), "--iters", str(args.iters), "--seed", str(args.seed),
           "--subset", str(subset)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"}
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    res = json.loads(line[len("RESULT "):])
    print(f"  {method:12s} n={res['n']:>8d}  {res['seconds']:8.2f} s  mse {res['mse']:.5f}  "
          f"peak RSS {res['peak_rss_mb']:.0f} MB, working {res['working_mb']:.0f} MB "
          f"((input + working) / input = {res['peak_over_input']:.2f})  "
          f"[wall {time.perf_counter() - t0:.0f} s]", flush=True)
    return res


def to_markdown(report: dict) -> str:
    m, cfg = report["machine"], report["config"]
    lines = [
        "# RQ-KMeans fit benchmark",
        "",
        f"Machine: {m.get('cpu')} ({m.get('cores')} cores, torch {m.get('torch')} with "
        f"{m.get('torch_threads')} threads, faiss {m.get('faiss')}, scikit-learn {m.get('sklearn')}); "
        f"load average at start {m.get('load_avg_at_start')}.",
        "",
        f"Data: {cfg['n']} x {cfg['dim']} float32 synthetic clustered; {cfg['levels']} levels x "
        f"{cfg['k']} codewords, {cfg['iters']} iterations, training sample 256 x K per level.",
        f"Command: `{cfg['command']}`",
        "",
        "| method | n | seconds | final MSE | MSE after each level | iterations | peak RSS (MB) "
        "| working (MB) | (input + working) / input |",
        "|---|---:|---:|---:|---|---|---:|---:|---:|",
    ]
    for name, r in report["runs"].items():
        if "error" in r:
            lines.append(f"| {name} | | error: {r['error']} | | | | | | |")
            continue
        lines.append(
            f"| {name} | {r['n']} | {r['seconds']:.2f} | {r['mse']:.5f} | "
            f"{', '.join(f'{v:.4f}' for v in r['level_mse'])} | {r['n_iter']} | "
            f"{r['peak_rss_mb']:.0f} | {r['working_mb']:.0f} | {r['peak_over_input']:.2f} |")
    lines += ["", "Ratios (same run):", ""]
    for key, v in report["ratios"].items():
        lines.append(f"- {key}: {v:.3f}" if isinstance(v, float) else f"- {key}: {v}")
    lines += ["", "Notes: faiss uses random init (its CPU default), sidkit greedy k-means++ "
              "(included in its time). Peak RSS includes the Python runtime, the libraries "
              "and the input array; *working* is the peak RSS minus the RSS measured after "
              "loading the input and importing the method's libraries, i.e. the memory the fit "
              "itself needs; (input + working) / input is the SPEC's 'peak memory vs input'. "
              "Times on this shared machine are noisy (other jobs run on the same 2 cores): "
              "compare ratios from the same run.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--quick", action="store_true", help="100k points")
    ap.add_argument("--k", type=int, default=256)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--full", action="store_true", help="also fit sidkit on all points")
    ap.add_argument("--sklearn-n", type=int, default=200_000,
                    help="points for the scikit-learn comparison (0 = skip)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="interleaved sidkit/faiss runs; the fastest of each is reported")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--data", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--subset", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "gen":
        np.save(args.data, clustered(args.n, args.dim, seed=args.seed))
        return
    if args.worker:
        args.method = args.worker
        worker(args)
        return
    if args.quick:
        args.n = 100_000
    print(f"generating {args.n} x {args.dim} ...", flush=True)
    report = {"machine": machine(),
              "config": {"n": args.n, "dim": args.dim, "k": args.k, "levels": args.levels,
                         "iters": args.iters, "seed": args.seed, "repeat": args.repeat,
                         "command": "python benchmarks/kmeans.py " + " ".join(sys.argv[1:])},
              "runs": {}, "ratios": {}}
    with tempfile.TemporaryDirectory() as tmp:
        data = str(Path(tmp) / "X.npy")
        # generated in a child process: on Linux a forked child starts with its parent's
        # peak RSS, so this process must never hold the data
        subprocess.run([sys.executable, __file__, "--worker", "gen", "--data", data,
                        "--n", str(args.n), "--dim", str(args.dim), "--seed", str(args.seed)],
                       check=True)
        runs = report["runs"]
        for _ in range(max(1, args.repeat)):  # interleaved, the fastest run is kept
            for name in ("sidkit", "faiss"):
                res = spawn(name, data, args)
                prev = runs.get(name)
                times = (prev or {}).get("all_seconds", []) + [res.get("seconds")]
                if prev is None or ("error" not in res and res["seconds"] < prev.get("seconds", 1e99)):
                    runs[name] = res
                runs[name]["all_seconds"] = times
        if args.full:
            runs["sidkit_full"] = spawn("sidkit_full", data, args)
        if args.sklearn_n:
            sub = min(args.sklearn_n, args.n)
            sub_arg = 0 if sub == args.n else sub
            runs["sklearn"] = spawn("sklearn", data, args, subset=sub_arg)
            runs["sidkit_on_sklearn_subset"] = (runs["sidkit"] if sub_arg == 0
                                                else spawn("sidkit", data, args, subset=sub_arg))
    r = report["ratios"]
    ok = lambda *names: all("error" not in runs.get(n, {"error": 1}) for n in names)  # noqa: E731
    if ok("sidkit", "faiss"):
        r["time sidkit / faiss"] = runs["sidkit"]["seconds"] / runs["faiss"]["seconds"]
        r["mse sidkit / faiss"] = runs["sidkit"]["mse"] / runs["faiss"]["mse"]
        r["peak memory sidkit / input"] = runs["sidkit"]["peak_over_input"]
        r["peak memory faiss / input"] = runs["faiss"]["peak_over_input"]
    if ok("sidkit_full", "faiss"):
        r["time sidkit_full / faiss"] = runs["sidkit_full"]["seconds"] / runs["faiss"]["seconds"]
        r["mse sidkit_full / faiss"] = runs["sidkit_full"]["mse"] / runs["faiss"]["mse"]
    if ok("sklearn", "sidkit_on_sklearn_subset"):
        s = runs["sidkit_on_sklearn_subset"]
        r["time sidkit / sklearn (same subset)"] = s["seconds"] / runs["sklearn"]["seconds"]
        r["mse sidkit / sklearn (same subset)"] = s["mse"] / runs["sklearn"]["mse"]
    for key, v in r.items():
        print(f"{key}: {v:.3f}")
    if not args.no_write:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "kmeans.json").write_text(json.dumps(report, indent=2) + "\n")
        (RESULTS / "kmeans.md").write_text(to_markdown(report))
        print(f"wrote {RESULTS / 'kmeans.json'} and kmeans.md")


if __name__ == "__main__":
    main()
