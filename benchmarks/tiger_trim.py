"""TIGER with its encoder inputs trimmed to their length groups against the padded inputs,
on a run's split and codes (an untrained model of the Beauty grid's size: the cost does not
depend on the weights).

Usage::

    python benchmarks/tiger_trim.py [RUN] [--users 512] [--batch 256] [--repeat 3] [--threads 1]

RUN defaults to the Beauty grid's text run.  Times one beam search (k 10, beam 20) of
``--users`` validation histories and one training step (forward + backward) of a batch of
``--batch`` (history, target) pairs, trimmed and padded interleaved ``--repeat`` times; prints
every time and the mean number of real encoder tokens.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run", nargs="?", default="runs/experiments/beauty/runs/beauty__text__rqkmeans-256x3")
    ap.add_argument("--users", type=int, default=512)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from sidkit.data import Split
    from sidkit.eval.sequences import SequenceData
    from sidkit.models import TIGER
    from sidkit.types import Codes

    data = SequenceData.from_split(Split.load(f"{args.run}/split"))
    m = TIGER(max_len=20, targets_per_user=1)
    m._set_catalogue(data)
    m.tokens_ = m._resolve_tokens(data, Codes.load(f"{args.run}/codes/codes"))
    m.device_ = torch.device("cpu")
    torch.manual_seed(0)
    m.module_ = m.build_module(data.n_items)
    inp = data.eval_inputs("valid", 20)
    rng = np.random.default_rng(0)
    sel = rng.choice(len(inp["history"]), args.users, replace=False)
    enc_all, y_all = m.train_arrays(data)
    rows = rng.choice(len(enc_all), args.batch, replace=False)
    enc, y = torch.as_tensor(enc_all[rows]), torch.as_tensor(y_all[rows])
    times = {(what, trim): [] for what in ("decode", "train") for trim in (True, False)}
    print(f"load average at start {os.getloadavg()}")
    for _ in range(args.repeat):
        for trim in (True, False):
            m.trim_padding = trim
            t0 = time.perf_counter()
            m.decode(inp["history"][sel], 10, users=inp["users"][sel])
            times["decode", trim].append(time.perf_counter() - t0)
            m.module_.train()
            t0 = time.perf_counter()
            m.train_loss(m.module_, enc, y).backward()
            m.module_.zero_grad()
            times["train", trim].append(time.perf_counter() - t0)
    for (what, trim), ts in times.items():
        print(f"{what:6s} {'trimmed' if trim else 'padded ':7s} " + " ".join(f"{t:.2f}" for t in ts) + " s")
    print(f"real encoder tokens: {float((enc_all != 0).sum(1).mean()):.1f} of {enc_all.shape[1]} on average")


if __name__ == "__main__":
    main()
