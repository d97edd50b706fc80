"""Cold-start evaluation on a data set (issue 25, docs/cold_start.md).

Usage::

    python benchmarks/cold_start.py ml-100k --seeds 0,1,2 --epochs 20 [--sasrec] [--tag _x]
    python benchmarks/cold_start.py ../shared/data/amazon-beauty --seeds 0,1,2 --epochs 100 --patience 3 \
        --eval-every 2 --lr 3e-3 --batch-size 128    # the Beauty grid's recipe (configs/experiments/beauty.toml)

Per seed (:func:`sidkit.cold_start.run_cold_start`): 5% of the test items cold
(``--fraction``, ``--rule random|latest``), removed from every training and validation
input; RQ-KMeans (``--sizes``, + disambiguation level with ``--headroom`` spare tokens)
fit on the warm items' text embeddings; a causal SID model (``--hidden``, ``--max-len``)
trained on the warm split, extended with the cold items (``add_items``); Recall@10 /
NDCG@10 on cold-target, warm-target and all test examples for the ε sweep
(``--eps``), content kNN and popularity (and SASRec with ``--sasrec``) lifted with
``WarmOnly``.  Writes ``benchmarks/results/cold_start{tag}.json`` and ``.md`` (mean ± std
over seeds) and prints the table; the load average is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dataset")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--patience", type=int, default=None, help="default: max(3, epochs // 4)")
    ap.add_argument("--eval-every", type=int, default=1)
    ap.add_argument("--lr", type=float, default=None, help="default: [train]'s")
    ap.add_argument("--batch-size", type=int, default=None, help="default: [train]'s")
    ap.add_argument("--fraction", type=float, default=0.05)
    ap.add_argument("--rule", default="random")
    ap.add_argument("--sizes", default="256,256,256")
    ap.add_argument("--headroom", type=int, default=8)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--max-len", type=int, default=20)
    ap.add_argument("--dense", type=float, default=0.0, help="the dense hybrid's loss weight (0: off)")
    ap.add_argument("--rerank", default="0", help="beam candidates re-ranked by the dense score, or 'all'")
    ap.add_argument("--dense-ids", action="store_true", help="one learned dense vector per warm item beside its "
                    "SID-token sum (cold items have none: docs/decoding.md)")
    ap.add_argument("--eps", default="0,0.1,0.2,0.5,1")
    ap.add_argument("--user-core", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sasrec", action="store_true")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from sidkit.config import TrainConfig
    from sidkit.data import item_texts, load_dataset, make_split, preprocess
    from sidkit.embed import TextEmbedder
    from sidkit.cold_start import run_cold_start

    load0 = os.getloadavg()
    ds = load_dataset(args.dataset)
    split = make_split(preprocess(ds.interactions, user_k=args.user_core))
    X = TextEmbedder("default", show_progress=False).embed(item_texts(ds.items))
    ids = ds.items.items.astype(str).to_numpy()
    train = TrainConfig(epochs=args.epochs, patience=args.patience or max(3, args.epochs // 4),
                        eval_every=args.eval_every,
                        **{k: v for k, v in (("lr", args.lr), ("batch_size", args.batch_size)) if v is not None})
    out = {"dataset": args.dataset, "args": vars(args), "seeds": []}
    for s in [int(x) for x in args.seeds.split(",")]:
        t0 = time.time()
        r = run_cold_start(split, ids, X, seed=s, fraction=args.fraction, rule=args.rule,
                           codebook_sizes=[int(k) for k in args.sizes.split(",")], headroom=args.headroom,
                           model_params={"hidden": args.hidden, "max_len": args.max_len, "dense": args.dense,
                                         "rerank": args.rerank if args.rerank == "all" else int(args.rerank),
                                         **({"dense_ids": True} if args.dense_ids else {})}, train=train,
                           device=args.device, epsilons=[float(e) for e in args.eps.split(",")],
                           baselines=("content_knn", "popularity") + (("sasrec",) if args.sasrec else ()))
        r["seconds"] = time.time() - t0
        out["seeds"].append(r)
        print(json.dumps({"seed": s, "seconds": round(r["seconds"]), "rows": [
            {"model": x["model"], "eps": x["epsilon"], "cold_r10": round(x["cold"]["recall@10"], 4),
             "warm_r10": round(x["warm"]["recall@10"], 4), "all_r10": round(x["all"]["recall@10"], 4)}
            for x in r["rows"]]}), flush=True)
    out["loadavg_start"], out["loadavg_end"] = load0, os.getloadavg()
    # mean ± std over seeds per (model, epsilon)
    keys = [(x["model"], x["epsilon"]) for x in out["seeds"][0]["rows"]]
    lines = ["| model | ε | cold R@10 | cold N@10 | warm R@10 | warm N@10 | all R@10 | all N@10 |",
             "|---|---|---|---|---|---|---|---|"]
    for k, (model, eps) in enumerate(keys):
        cells = []
        for part in ("cold", "warm", "all"):
            for met in ("recall@10", "ndcg@10"):
                v = np.array([sd["rows"][k][part][met] for sd in out["seeds"]])
                cells.append(f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.4f}")
        lines.append(f"| {model} | {'' if eps is None else eps} | " + " | ".join(cells) + " |")
    sd0 = out["seeds"][0]
    md = (f"Cold start on {args.dataset}: {sd0['n_cold_items']} cold items of {sd0['n_items']}, "
          f"{sd0['rows'][0]['n_cold']} cold / {sd0['rows'][0]['n_warm']} warm test examples (seed "
          f"{sd0['seed']}); seeds {args.seeds}; {args.epochs} epochs; load {load0[0]:.1f}\n\n" + "\n".join(lines))
    res = Path(__file__).parent / "results"
    res.mkdir(exist_ok=True)
    (res / f"cold_start{args.tag}.json").write_text(json.dumps(out, indent=1))
    (res / f"cold_start{args.tag}.md").write_text(md + "\n")
    print(md)


if __name__ == "__main__":
    main()
