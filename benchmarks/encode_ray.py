"""Catalogue encoding on Ray Data vs the in-process encoder: items/s and peak memory.

Usage::

    python benchmarks/encode_ray.py --n 200000,1000000            # both encoders
    python benchmarks/encode_ray.py --n 2000000 --no-inprocess    # Ray only
    python benchmarks/encode_ray.py --dist zipf --n 200000
    python benchmarks/encode_ray.py --dist clustered,zipf --n 1000000 --repeat 3   # median, worst

For every N: ``N`` synthetic 384-d unit-normalised items (stored as float64) (``--dist clustered``: Gaussian
blobs around 1000 unit centres; ``zipf``: Zipf-sized clusters, as ``_common.zipf_unit``) are
written to Parquet in 100k-row chunks (never all in memory).  An RQ-KMeans tokenizer
(``--sizes``, default 256,256,256 + the collision counter) is fitted once on ``--fit-n``
other items drawn from the first distribution, so every catalogue item is a *new* item
and pass 2 (the global numbering of new items) runs over all N.  Then, each in its own
process, timed end to end (read Parquet -> SIDs -> write Parquet):

* ``inprocess``: ``pq.read_table`` of the whole file, ``encode_in_process`` (one
  ``tokenizer.encode`` of the catalogue in id order), ``pq.write_table``;
* ``ray``: ``sidkit encode-ray`` on a local Ray started with ``--num-cpus`` CPUs.

CPU time (user + system, summed over the process tree, sampled every 0.5 s) is recorded
besides wall time: on the shared 2-core machine the wall time mostly measures the other
jobs.  Peak memory is sampled every 0.5 s as the sum over the process and all its descendants
(Ray's GCS, raylet, workers) of the proportional set size (PSS: shared pages such as
the object store are split among the processes that map them, not counted once per
process), and of the RSS.  Writes ``benchmarks/results/encode_ray.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from _common import machine as _machine

HERE = Path(__file__).resolve().parent
D = 384


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(p))
    return kids


def _tree(pid: int) -> list[int]:
    kids, out, stack = _children(), [], [pid]
    while stack:
        p = stack.pop()
        out.append(p)
        stack += kids.get(p, [])
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pids: list[int]) -> dict[int, float]:
    """user + system CPU seconds of every live process of ``pids``."""
    out = {}
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[p] = (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, IndexError, ValueError):
            continue
    return out


def _mem_mb(pids: list[int]) -> tuple[float, float]:
    pss = rss = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss += int(line.split()[1])
                    elif line.startswith("Rss:"):
                        rss += int(line.split()[1])
        except OSError:
            continue
    return pss / 1024, rss / 1024


def run_measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run ``cmd``; wall time and peak PSS / RSS of its process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    peak = {"pss": 0.0, "rss": 0.0}
    done = threading.Event()

    cpu: dict[int, float] = {}  # pid -> last seen CPU seconds (a sample every 0.5 s)

    def sample() -> None:
        while not done.is_set():
            pids = _tree(proc.pid)
            pss, rss = _mem_mb(pids)
            peak["pss"], peak["rss"] = max(peak["pss"], pss), max(peak["rss"], rss)
            for p, c in _cpu_s(pids).items():
                cpu[p] = max(cpu.get(p, 0.0), c)
            done.wait(0.5)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, _ = proc.communicate()
    done.set()
    th.join()
    return {"rc": proc.returncode, "wall_s": time.perf_counter() - t0, "cpu_s": sum(cpu.values()),
            "peak_pss_mb": peak["pss"], "peak_rss_mb": peak["rss"], "tail": out[-1500:]}


def make_items(path: Path, n: int, dist: str, seed: int, draw: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    chunk = 100_000
    part = path.with_name(path.name + ".part")  # renamed when complete: an interrupted
    # run never leaves a truncated file that a later run would take as the catalogue
    rs = np.random.default_rng(seed)
    k = 1000  # the same centres (and cluster sizes) for every chunk
    centers = rs.normal(size=(k, D)).astype(np.float32)
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    if dist == "clustered":  # equal-probability blobs, per-centre scale
        p, scales = np.full(k, 1.0 / k), rs.uniform(0.1, 0.6, k).astype(np.float32) / np.sqrt(D)
    else:  # Zipf-sized clusters (as _common.zipf_unit)
        p = 1.0 / np.arange(1, k + 1) ** 1.1
        p /= p.sum()
        scales = (rs.uniform(0.5, 1.5, k) / np.sqrt(D)).astype(np.float32)
    for i, s in enumerate(range(0, n, chunk)):
        m = min(chunk, n - s)
        r = np.random.default_rng([seed, draw, i])
        z = r.choice(k, size=m, p=p)
        X = centers[z] + scales[z, None] * r.standard_normal((m, D), dtype=np.float32)
        X /= np.linalg.norm(X, axis=1, keepdims=True)
        # float64 values (8 bytes each, as pandas writes lists of Python floats); the
        # encoders read them as float32
        emb = pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1).astype(np.float64)), D)
        tbl = pa.table({"item_id": np.arange(s, s + m, dtype=np.int64), "embedding": emb})
        if writer is None:
            writer = pq.ParquetWriter(str(part), tbl.schema, use_dictionary=False,
                                      compression="none")  # random floats: both only cost
        writer.write_table(tbl, row_group_size=50_000)
    writer.close()
    part.replace(path)


INPROCESS = r"""
import sys, time, numpy as np, pyarrow as pa, pyarrow.parquet as pq, torch
from sidkit.tokenizers.base import Tokenizer
from sidkit.scale.ray_encode import batch_embeddings, encode_in_process, _codes_table
torch.set_num_threads(int(sys.argv[4]))
t0 = time.perf_counter()
tok = Tokenizer.load(sys.argv[1])
tbl = pq.read_table(sys.argv[2])
X = batch_embeddings(tbl, "embedding", "item_id", 384)
ids = tbl.column("item_id").to_numpy()
del tbl
t1 = time.perf_counter()
codes = encode_in_process(tok, ids, X)
t2 = time.perf_counter()
pq.write_table(_codes_table(ids, codes, "item_id"), sys.argv[3])
print(f"RESULT read={t1 - t0:.2f} encode={t2 - t1:.2f} write={time.perf_counter() - t2:.2f}")
"""


def measured(r: dict) -> dict:
    """Wall and CPU time and peak memory of a :func:`run_measured` result."""
    return {k: r[k] for k in ("wall_s", "cpu_s", "peak_pss_mb", "peak_rss_mb")}


def _median_run(runs: list[dict]) -> dict:
    """The run of median wall time (the upper median for an even count)."""
    return sorted(runs, key=lambda r: r["wall_s"])[len(runs) // 2]


def run_inprocess(codes: Path, items: Path, out: Path, n: int, threads: int, env: dict) -> dict:
    r = run_measured([sys.executable, "-c", INPROCESS, str(codes / "tokenizer"),
                      str(items), str(out), str(threads)], env)
    if r["rc"] != 0:
        raise SystemExit(f"in-process run failed:\n{r['tail']}")
    parts = dict(kv.split("=") for kv in r["tail"].split("RESULT ")[1].split())
    return {**measured(r),
            **{f"{k}_s": float(v) for k, v in parts.items()},
            "items_per_s": n / r["wall_s"], "items_per_cpu_s": n / r["cpu_s"]}


def run_ray(codes: Path, items: Path, out: Path, n: int, args, env: dict) -> dict:
    cmd = [str(Path(sys.executable).parent / "sidkit"), "encode-ray", "--codes", str(codes),
           "--input", str(items), "--output", str(out), "--overwrite",
           "--num-cpus", str(args.num_cpus), "--batch-size", str(args.batch_size)]
    if args.workers:
        cmd += ["--workers", str(args.workers)]
    r = run_measured(cmd, env)
    if r["rc"] != 0:
        raise SystemExit(f"Ray run failed:\n{r['tail']}")
    summ = json.loads((out / "_sidkit_encode.json").read_text())
    return {**measured(r),
            "items_per_s": n / r["wall_s"], "items_per_cpu_s": n / r["cpu_s"],
            "job_s": summ["seconds"], "encode_pass_s": summ["seconds_encode"],
            "disambiguate_pass_s": summ.get("seconds_disambiguate"),
            "job_items_per_s": n / summ["seconds"], "n_new": summ["n_new"],
            "pass2_chunks": summ.get("n_chunks"), "pass2_buckets": summ.get("n_buckets"),
            "workers": summ["workers"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", default="200000,1000000", help="comma-separated catalogue sizes")
    ap.add_argument("--dist", default="clustered", help="clustered, zipf, or both (comma-separated)")
    ap.add_argument("--sizes", default="256,256,256")
    ap.add_argument("--fit-n", type=int, default=20_000)
    ap.add_argument("--batch-size", type=int, default=16384)
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the in-process encoder")
    ap.add_argument("--no-inprocess", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="paired runs per size (median and worst ratio)")
    ap.add_argument("--work", default="/tmp/sidkit-encode-ray-bench")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = [int(k) for k in args.sizes.split(",")]
    dists = args.dist.split(",")
    codes = work / "codes"
    if not (codes / "tokenizer" / "tokenizer.json").exists():
        import pyarrow.parquet as pq

        from sidkit.scale.ray_encode import batch_embeddings
        from sidkit.tokenizers import RQKMeans

        make_items(work / "fit.parquet", args.fit_n, dists[0], seed=7, draw=1)  # apart from the items
        X = batch_embeddings(pq.read_table(work / "fit.parquet"), "embedding", "item_id", D)
        t = time.perf_counter()
        RQKMeans(codebook_sizes=sizes, random_state=0).fit(X).save(codes / "tokenizer")
        print(f"fitted RQ-KMeans {sizes} on {args.fit_n} items in {time.perf_counter() - t:.1f}s", flush=True)
    machine = _machine()  # the load average when the benchmark starts
    # a loaded machine starts Ray workers slowly: give them time instead of failing
    env = dict(os.environ, SIDKIT_NO_PROGRESS="1", RAY_worker_register_timeout_seconds="600")
    rows = []
    for dist in dists:
        for n in (int(v) for v in args.n.split(",")):
            items = work / f"items_{dist}_{n}.parquet"
            if not items.exists():
                t = time.perf_counter()
                make_items(items, n, dist, seed=7)
                print(f"wrote {n} {dist} items in {time.perf_counter() - t:.1f}s "
                      f"({items.stat().st_size / 1e6:.0f} MB)", flush=True)
            row = {"dist": dist, "n": n, "file_mb": items.stat().st_size / 1e6}
            inproc_runs, ray_runs = [], []
            for rep in range(args.repeat):  # paired: in process then Ray, `--repeat` times
                if not args.no_inprocess:
                    inproc_runs.append(run_inprocess(codes, items, work / f"inproc_{dist}_{n}.parquet",
                                                     n, args.threads, env))
                    print(f"in-process {dist} N={n} (run {rep + 1}): {inproc_runs[-1]}", flush=True)
                ray_runs.append(run_ray(codes, items, work / f"ray_{dist}_{n}", n, args, env))
                print(f"ray {dist} N={n} (run {rep + 1}): {ray_runs[-1]}", flush=True)
            row["ray"], row["ray_runs"] = _median_run(ray_runs), ray_runs
            if inproc_runs:
                import pandas as pd

                row["inprocess"], row["inprocess_runs"] = _median_run(inproc_runs), inproc_runs
                a = pd.read_parquet(work / f"inproc_{dist}_{n}.parquet").sort_values("item_id")
                b = pd.read_parquet(work / f"ray_{dist}_{n}").sort_values("item_id")
                row["identical"] = bool((a.to_numpy() == b[a.columns].to_numpy()).all())
                # per pair: in-process throughput / Ray throughput = Ray wall / in-process wall
                ratios = [r["wall_s"] / i["wall_s"] for i, r in zip(inproc_runs, ray_runs)]
                row["ratios_inprocess_over_ray"] = ratios
                row["ratio_inprocess_over_ray"] = float(np.median(ratios))
                row["ratio_inprocess_over_ray_worst"] = max(ratios)
                row["cpu_ratio_ray_over_inprocess"] = row["ray"]["cpu_s"] / row["inprocess"]["cpu_s"]
                print(f"identical SIDs: {row['identical']}; in-process/Ray throughput: median "
                      f"{row['ratio_inprocess_over_ray']:.2f}x, worst {max(ratios):.2f}x", flush=True)
            rows.append(row)
            res = {"machine": machine, "args": vars(args), "rows": rows}  # after every row
            (HERE / "results").mkdir(exist_ok=True)
            (HERE / "results" / f"encode_ray{args.tag}.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
