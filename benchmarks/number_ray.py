"""Peak memory of `encode-ray`'s numbering pass (pass 2) alone, by catalogue size.

Usage::

    python benchmarks/number_ray.py --n 1000000,3000000,10000000
    python benchmarks/number_ray.py --n 30000000 --rows-per-task 250000

Pass 2 of ``sidkit encode-ray`` numbers the new items (those outside the tokenizer's
fitted catalogue) under each semantic prefix in item-id order
(``sidkit.scale.ray_encode._disambiguate``): Ray tasks split pass 1's row groups into
buckets by a hash of the semantic prefix, then one task per bucket ranks its items
(until 2026-12 it was a Ray Data sort by prefix; ``number_ray_quiet_footer*.json`` hold
that design's figures).  Its input here is what pass 1
writes for N new items (files of 16,384 rows, encode_ray.py's batch size; tokens drawn
with Zipf-like prefix sizes from 256 x 256 x 256 codebooks), made in seconds, so the pass
can be measured at sizes whose catalogue would not fit on this disk (a catalogue of 384-d
float64 embeddings takes 31 GB of Parquet per 10M items).

Each size runs in its own process on a local Ray (``--num-cpus``; ``--object-store-mb``
caps its object store: it made no difference up to 30M), whose tree's proportional set
size (PSS) is sampled every 0.5 s as in ``encode_ray.py``.  The output is checked: N rows, and (prefix, last token) unique.
Writes ``benchmarks/results/number_ray{--tag}.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from _common import machine as _machine
from encode_ray import measured, run_measured

HERE = Path(__file__).resolve().parent
ROWS_PER_FILE = 16_384  # encode_ray.py's --batch-size

CHILD = r"""
import json, sys, time
from pathlib import Path
from sidkit.scale.ray_encode import _configure_data_context, _disambiguate, ray_session
osm = int(sys.argv[4])
if osm:  # a capped object store (sidkit's own session would take Ray's default)
    import ray
    ray.init(num_cpus=int(sys.argv[3]), object_store_memory=osm * 2**20, include_dashboard=False,
             log_to_driver=False)
with ray_session(None, int(sys.argv[3])) as ray:
    _configure_data_context(ray)
    t = time.perf_counter()
    kw = {"rows_per_task": int(sys.argv[5])} if int(sys.argv[5]) else {}
    s = _disambiguate(ray, Path(sys.argv[1]), Path(sys.argv[2]), "item_id", 3, **kw)
    s["seconds_total"] = time.perf_counter() - t
print("RESULT " + json.dumps(s))
"""


def make_stage1(path: Path, n: int, seed: int = 0, prefixes: str = "zipf") -> None:
    """What pass 1 writes for ``n`` new items: item_id, sid_0..sid_2, the new-item flag
    and the per-prefix catalogue count (here 0: every item is new).

    ``prefixes="zipf"``: level 0 Zipf (exponent 1.1) over 256 codes, level 1 uniform (the
    largest prefix holds ~0.08% of the items); ``"hot"``: both levels Zipf with exponent
    2, so one prefix holds ~37% of them -- the worst case for pass 2, which ranks a
    prefix's new items in one task."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sidkit.scale.ray_encode import _BASE, _NEW

    part = path.with_name(path.name + ".part")
    shutil.rmtree(part, ignore_errors=True)
    part.mkdir(parents=True)
    rs = np.random.default_rng(seed)
    p0 = 1.0 / np.arange(1, 257) ** (2.0 if prefixes == "hot" else 1.1)
    p0 /= p0.sum()
    ids = rs.permutation(n).astype(np.int64)  # files hold ids in no particular order
    for i, s in enumerate(range(0, n, ROWS_PER_FILE)):
        m = min(ROWS_PER_FILE, n - s)
        tbl = pa.table({"item_id": ids[s:s + m],
                        "sid_0": rs.choice(256, size=m, p=p0).astype(np.int64),
                        "sid_1": (rs.choice(256, size=m, p=p0).astype(np.int64)
                                  if prefixes == "hot" else rs.integers(0, 256, m, dtype=np.int64)),
                        "sid_2": np.zeros(m, np.int64),  # pass 1 marks a new item by count + 0
                        _NEW: np.ones(m, bool), _BASE: np.zeros(m, np.int64)})
        pq.write_table(tbl, str(part / f"{i:05d}.parquet"))
    part.replace(path)


def check_output(out: Path, n: int) -> bool:
    import pyarrow.dataset as pads

    t = pads.dataset(str(out), format="parquet").to_table(columns=["sid_0", "sid_1", "sid_2"])
    if t.num_rows != n:
        return False
    key = (t.column("sid_0").to_numpy() * 256 + t.column("sid_1").to_numpy()) * (n + 1) \
        + t.column("sid_2").to_numpy()
    return bool(np.unique(key).size == n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", default="1000000,3000000,10000000", help="comma-separated numbers of new items")
    ap.add_argument("--prefixes", choices=["zipf", "hot"], default="zipf",
                    help="prefix sizes of the new items (see make_stage1)")
    ap.add_argument("--num-cpus", type=int, default=2)
    ap.add_argument("--rows-per-task", type=int, default=0, help="pass 2's rows per task (0: sidkit's default)")
    ap.add_argument("--object-store-mb", type=int, default=0, help="cap of the local Ray's object store (0: Ray's default)")
    ap.add_argument("--work", default="/tmp/sidkit-number-ray-bench")
    ap.add_argument("--tag", default="")
    ap.add_argument("--no-check", action="store_true", help="skip reading the output back")
    args = ap.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    machine = _machine()
    env = dict(os.environ, SIDKIT_NO_PROGRESS="1", RAY_worker_register_timeout_seconds="600")
    rows = []
    for n in (int(v) for v in args.n.split(",")):
        stage1 = work / f"stage1_{args.prefixes}_{n}"
        if not stage1.exists():
            t = time.perf_counter()
            make_stage1(stage1, n, prefixes=args.prefixes)
            print(f"wrote pass-1 output for {n} new items in {time.perf_counter() - t:.1f}s", flush=True)
        out = work / f"out_{n}"
        shutil.rmtree(out, ignore_errors=True)
        r = run_measured([sys.executable, "-c", CHILD, str(stage1), str(out), str(args.num_cpus),
                          str(args.object_store_mb), str(args.rows_per_task)], env)
        if r["rc"] != 0:
            raise SystemExit(f"pass 2 failed:\n{r['tail']}")
        summ = json.loads(r["tail"].split("RESULT ")[1].splitlines()[0])
        row = {"n": n, "prefixes": args.prefixes, "object_store_mb": args.object_store_mb or None, **measured(r),
               "pass2_s": summ["seconds_disambiguate"], "n_new": summ["n_new"],
               "chunks": summ.get("n_chunks"), "buckets": summ.get("n_buckets")}
        if not args.no_check:
            row["output_ok"] = check_output(out, n)
        shutil.rmtree(out, ignore_errors=True)
        print(f"N={n}: {row}", flush=True)
        rows.append(row)
        (HERE / "results").mkdir(exist_ok=True)
        (HERE / "results" / f"number_ray{args.tag}.json").write_text(
            json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
