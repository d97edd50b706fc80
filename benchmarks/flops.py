"""How close to the machine's limit do SASRec and the causal SID model train on Beauty?

Counts the floating-point operations of one training epoch from the data (the real,
unpadded tokens sidkit computes since histories are length-grouped), measures the
machine's fp32 matrix-multiply rate at the models' own shapes, and, with ``--measure``,
times one epoch of each model, then prints FLOPs per epoch, the time the GEMM rate
allows, and the share of that rate the epoch reaches.

    python benchmarks/flops.py --threads 2 --measure

Counting (multiply-adds x 2; training = forward + backward ~ 3 x forward):
- per real input token and block: Q, K, V and output projections 4 d^2, feed-forward
  2 d f, attention 2 d l (l = the token's real context, on average half its window);
- output: SASRec scores every catalogue item at every real position (d N), the causal
  model scores its token vocabulary at every target token (d V).
Embedding look-ups, layer norms, softmax and the optimizer are left out (they are
memory-bound, not FLOPs), so the share is an upper bound of the GEMM work's efficiency.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))


def transformer_flops(tokens: int, ctx_sum: float, d: int, f: int, blocks: int, out_rows: int, out_cols: int) -> float:
    """Training FLOPs (3 x forward) of ``tokens`` real input tokens through ``blocks`` blocks
    of width ``d`` and feed-forward ``f`` (``ctx_sum``: the sum over tokens of their real
    context length), then an output layer of ``out_rows`` x ``out_cols`` (d x N)."""
    per_block = tokens * (4 * d * d + 2 * d * f) + 2 * d * ctx_sum
    fwd_macs = blocks * per_block + out_rows * d * out_cols
    return 3 * 2 * fwd_macs


def window_stats(lengths: np.ndarray) -> tuple[int, float]:
    """(tokens, sum of causal context lengths) of windows with these real lengths."""
    lengths = np.asarray(lengths, np.float64)
    return int(lengths.sum()), float((lengths * (lengths + 1) / 2).sum())


def gemm_rate(m: int, k: int, n: int, repeat: int = 20) -> float:
    """fp32 GFLOP/s of (m, k) @ (k, n) and its backward products, median of ``repeat``."""
    import torch

    a, b = torch.randn(m, k), torch.randn(k, n)
    g = torch.randn(m, n)
    times = []
    for _ in range(repeat + 2):
        t0 = time.perf_counter()
        a @ b
        g @ b.T
        a.T @ g
        times.append(time.perf_counter() - t0)
    return 3 * 2 * m * k * n / np.median(times[2:]) / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--measure", action="store_true", help="also time one training epoch of each model")
    ap.add_argument("--beauty", type=Path, default=ROOT.parent.parent / "shared" / "data" / "amazon-beauty")
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from train import _random_codes

    from sidkit.data import leave_one_out, load_dataset
    from sidkit.eval import SequenceData
    from sidkit.models import CausalSID, SASRec

    data = SequenceData.from_split(leave_one_out(load_dataset(args.beauty).interactions))
    N = data.n_items
    rows = []
    # SASRec: the default model (d 64, 2 blocks, f = d), history 50
    sas = SASRec(max_len=50)
    x = sas.train_arrays(data)[0]
    tok, ctx = window_stats((np.asarray(x) != 0).sum(1))
    rows.append(("sasrec", tok, transformer_flops(tok, ctx, 64, 64, 2, tok, N), (tok, 64, N), SASRec(max_len=50), {}))
    # causal SID: d 128, 2 layers, f 256, history 20 items, random 256 x 3 SIDs + a collision level
    codes = _random_codes(np.asarray(data.item_ids), 0)
    cs = CausalSID(max_len=20)
    cs.tokens_ = cs._resolve_tokens(data, codes)
    xc, yc = cs.train_arrays(data)
    tok, ctx = window_stats((np.asarray(xc) != 0).sum(1))
    targets = int((np.asarray(yc) >= 0).sum())
    V = cs.tokens_.vocab_size
    rows.append(("causal_sid", tok, transformer_flops(tok, ctx, 128, 256, 2, targets, V), (targets, 128, V),
                 CausalSID(max_len=20), {"codes": codes}))
    print(f"{args.threads} thread(s); Beauty: {len(data.users)} users, {N} items")
    print("| model | real input tokens / epoch | GFLOP / epoch | GEMM rate at its output shape (GFLOP/s) | "
          "epoch at that rate (s) | measured epoch (s) | share of the rate |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, tokens, flops, (m, k, n), model, fit_kw in rows:
        rate = gemm_rate(min(m, 4096), k, n)
        ideal = flops / 1e9 / rate
        measured = share = ""
        if args.measure:
            train = {"epochs": 1, "patience": 1, "batch_size": 128, "warmup_steps": 0,
                     "lr": 3e-3 if name == "causal_sid" else 1e-3, "eval_every": 10}
            model.fit(data, train=train, seed=0, device="cpu", progress=False, **fit_kw)
            secs = model.history_[0]["seconds"]
            measured, share = f"{secs:.1f}", f"{ideal / secs:.0%}"
        print(f"| {name} | {tokens} | {flops / 1e9:.0f} | {rate:.0f} | {ideal:.1f} | {measured} | {share} |",
              flush=True)


if __name__ == "__main__":
    main()
