"""Issue 24's speed goals on Amazon Beauty, as the library runs today (no before/after):
SASRec epoch and full-ranking evaluation, causal SID epoch and beam evaluation (width 20),
each model trained ``--epochs`` epochs from seed 0 with the validation after every epoch.

    python benchmarks/beauty_goals.py --threads 2 --epochs 2

Goals (2-core CPU, quiet): SASRec epoch <= 12 s, its evaluation of the 22,363 users <= 4 s,
causal SID epoch <= 20 s, beam evaluation <= 10 s.  The causal model reads random 256 x 3
SIDs plus a collision level (``train._random_codes``): speed depends on their shape, not
their quality.  ``benchmarks/train.py --data beauty`` compares with the padded code.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--beauty", type=Path, default=ROOT.parent.parent / "shared" / "data" / "amazon-beauty")
    args = ap.parse_args()
    import numpy as np
    import torch

    from _common import require_quiet
    from train import _random_codes

    warning = require_quiet()
    torch.set_num_threads(args.threads)
    from sidkit.data import leave_one_out, load_dataset
    from sidkit.eval import SequenceData
    from sidkit.models import CausalSID, SASRec

    data = SequenceData.from_split(leave_one_out(load_dataset(args.beauty).interactions))
    cfg = {"epochs": args.epochs, "patience": args.epochs, "batch_size": 128, "warmup_steps": 100, "lr": 1e-3}
    print(f"load {os.getloadavg()[0]:.2f}, {args.threads} threads; {warning or 'quiet'}")
    for name, make, fit_kw in (
            ("sasrec", lambda: SASRec(), {}),
            ("causal_sid", lambda: CausalSID(max_len=50),
             {"codes": _random_codes(np.asarray(data.item_ids), 0)})):
        train = {**cfg, "lr": 3e-3} if name == "causal_sid" else cfg
        m = make().fit(data, train=train, seed=0, device="cpu", progress=False, **fit_kw)
        for h in m.history_:
            print(f"{name}: epoch {h['epoch']}: train {h['seconds']:.1f} s, validation of {data.n_role('valid')} "
                  f"users {h['valid_seconds']:.1f} s (valid ndcg@10 {h['valid']['ndcg@10']:.4f})", flush=True)


if __name__ == "__main__":
    main()
