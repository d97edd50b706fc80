"""SASRec training and full-ranking evaluation speed on MovieLens-100K (SPEC 8).

Usage::

    python benchmarks/train.py                # 3 epochs, 3 eval repeats
    python benchmarks/train.py --threads 1 --tag _1thread

SPEC 8 goals on the 2-core CPU: a SASRec epoch in under 15 s, full-ranking evaluation
of all users under 2 s.  Measured in ONE process on ML-100K (5-core users,
leave-one-out): SASRec with the default hyper-parameters (2 blocks, hidden 64,
2 heads, max_len 50, dropout 0.2, batch ``--batch-size``), ``--epochs`` epochs with the
validation of each epoch (the per-epoch training seconds exclude it); then
``evaluate(model, data, "test")`` of all 943 users, ``--repeat`` times (fastest kept,
all in the JSON), and the same for the popularity baseline.  The load average at the
start and end is recorded: the machine is shared, absolute times are noisy.
Writes ``benchmarks/results/train{tag}.json`` and ``.md``.

Amazon Beauty (issue 24, section 4)::

    python benchmarks/train.py --data beauty --threads 1 --repeat 3 --tag _beauty

22,363 users, 12,101 items, histories of 8.9 items on average, padded to ``max_len``
50: SASRec (defaults) and the causal SID model (defaults: hidden 128, 2 layers, 4 heads,
max_len 50, beam 20) on SIDs of 256 x 3 + a collision level (4 tokens per item: random
codes with ``--codes`` unset -- the speed depends on their shape, not their quality --
or a run's ``RUN/codes``).  Each repeat runs, per model, **both paths interleaved in this
one process** (order alternating between repeats): ``after`` (the default: length
groups trimmed to their real histories, never computing padding, and SASRec's fused
softmax loss) and ``before`` (``model.trim_padding = model.fused_loss = False``: every
batch at its full padded width and the plain loss, the code before issue 24): one training epoch from the same seed (its seconds exclude the validation),
the validation in the training loop (``evaluate`` of all 22,363 validation users: model
+ ranking), and the model's own pass over the 22,363 test users (``scores`` /
``recommend(k=20)``, the same weights in both paths: also checks that they agree).
The report gives the median and the worst (largest) seconds of each, their ratios, the
load average, the analytic FLOPs of each step (matmuls and attention, backward = 2x
forward) against the padded work, and the measured FLOP rate against a large sgemm's
in the same process ("how close to the machine's limit").  Absolute times on a shared
machine are noisy: quote the ratios, with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from _common import machine as _machine


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    ap.add_argument("--data", choices=("ml-100k", "beauty"), default="ml-100k")
    ap.add_argument("--beauty", type=Path, default=Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
                    / "amazon-beauty", help="the Amazon Beauty folder (user_sequence.txt.gz)")
    ap.add_argument("--models", default="sasrec,causal", help="beauty: which models (sasrec, causal)")
    ap.add_argument("--codes", type=Path, default=None, help="beauty: a Codes directory (RUN/codes) for the "
                    "causal SID model (default: random 256 x 3 + collision level)")
    ap.add_argument("--causal-batch-size", type=int, default=128)
    ap.add_argument("--users", type=int, default=0, help="beauty: only the first N users (a quick check; 0 = all)")
    ap.add_argument("--after-only", action="store_true", help="beauty: time the current code only (no 'before' "
                    "path: its padded causal epoch takes minutes)")
    args = ap.parse_args()
    if args.data == "beauty":
        return beauty(args)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from sidkit.data import load_dataset, make_split, preprocess
    from sidkit.eval import SequenceData, evaluate
    from sidkit.models import Popularity, SASRec

    info = _machine()
    t0 = time.perf_counter()
    ds = load_dataset("ml-100k")
    split = make_split(preprocess(ds.interactions, user_k=5), "leave_one_out")
    data = SequenceData.from_split(split)
    prep = time.perf_counter() - t0
    inputs, targets = data.windows(50)

    model = SASRec().fit(data, train={"epochs": args.epochs, "batch_size": args.batch_size}, seed=0,
                         device=args.device, progress=False)
    epochs = [{"epoch": h["epoch"], "train_s": h["seconds"], "loss": h["loss"],
               "valid_ndcg@10": h["valid"]["ndcg@10"]} for h in model.history_]

    def timed(m):
        runs = []
        for _ in range(args.repeat):
            t = time.perf_counter()
            res = evaluate(m, data, "test")
            runs.append(time.perf_counter() - t)
        return runs, res

    sas_runs, sas_res = timed(model)
    pop_runs, pop_res = timed(Popularity().fit(data))
    try:
        load_end = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        load_end = None
    out = {
        "machine": {**info, "torch_threads": torch.get_num_threads(), "load_avg_at_end": load_end},
        "data": {"users": int(len(data.users)), "items": int(data.n_items), "train_windows": int(len(inputs)),
                 "train_targets": int((targets > 0).sum()), "prep_s": prep},
        "sasrec": {"batch_size": args.batch_size, "epochs": epochs,
                   "median_epoch_s": sorted(e["train_s"] for e in epochs)[len(epochs) // 2],
                   "eval_all_users_s": min(sas_runs), "eval_runs_s": sas_runs,
                   "test_ndcg@10_after_epochs": sas_res["ndcg@10"]},
        "popularity": {"eval_all_users_s": min(pop_runs), "eval_runs_s": pop_runs},
        "goals": {"epoch_s": 15.0, "eval_all_users_s": 2.0},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"train{args.tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    s = out["sasrec"]
    md = [f"# SASRec training / evaluation speed on MovieLens-100K{args.tag}", "",
          f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({torch.get_num_threads()} threads), "
          f"CUDA {info['cuda']}; load average at start {info.get('load_avg_at_start')}, at end {load_end}.", "",
          f"Data: {out['data']['users']} users, {out['data']['items']} items, {out['data']['train_windows']} "
          f"training windows of 51 items, {out['data']['train_targets']} training targets.", "",
          "| measure | seconds | goal |", "|---|---:|---:|",
          f"| SASRec epoch (median of {len(epochs)}, batch {args.batch_size}, training only) | "
          f"{s['median_epoch_s']:.2f} | < 15 |",
          f"| SASRec full-ranking evaluation, all {sas_res['n_examples']} test users (best of {args.repeat}) | "
          f"{s['eval_all_users_s']:.3f} | < 2 |",
          f"| popularity full-ranking evaluation, all users (best of {args.repeat}) | "
          f"{out['popularity']['eval_all_users_s']:.3f} | < 2 |", "",
          "Per-epoch training seconds: " + ", ".join(f"{e['train_s']:.2f}" for e in epochs) + ".", ""]
    (args.out / f"train{args.tag}.md").write_text("\n".join(md))
    print("\n".join(md))


# ------------------------------------------------------------------ Amazon Beauty
def _random_codes(item_ids, seed: int = 0):
    """256 x 3 random SIDs + a collision level (the counter among items sharing the three
    levels): the shape of sidkit's default RQ-KMeans codes of 12k items."""
    import numpy as np

    from sidkit.types import Codes

    rng = np.random.default_rng(seed)
    n = len(item_ids)
    codes = np.zeros((n, 4), np.int64)
    codes[:, :3] = rng.integers(0, 256, (n, 3))
    _, inv = np.unique(codes[:, :3], axis=0, return_inverse=True)
    inv = inv.ravel()
    order = np.argsort(inv, kind="stable")
    first = np.r_[0, np.flatnonzero(np.diff(inv[order])) + 1]
    codes[order, 3] = np.arange(n) - np.repeat(first, np.diff(np.r_[first, n]))
    return Codes(codes, (256, 256, 256, max(2, int(codes[:, 3].max()) + 1)), item_ids=np.asarray(item_ids))


def _sgemm_gflops(n: int = 1024, repeat: int = 5) -> float:
    """The best rate of an (n x n) @ (n x n) float32 matmul, GFLOP/s (this process's threads)."""
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def _block_flops(widths, D: int, F: int, n_blocks: int) -> float:
    """Forward FLOPs of ``n_blocks`` pre-LN blocks over rows of the given widths:
    matmuls (qkv, projection, feed-forward) per token, attention (QK^T and AV over every
    key of the row, as the masked dense kernel computes it) per token pair."""
    import numpy as np

    w = np.asarray(widths, np.float64)
    return float(n_blocks * (w.sum() * 2 * D * (4 * D + 2 * F) + (w ** 2).sum() * 4 * D))


def _group_widths(model, tokens, *also, batch: int, order=None, overhead=None):
    """The width each row runs at in the model's length groups, over batches of ``batch`` rows."""
    import numpy as np

    widths = np.zeros(len(tokens), np.int64)
    idx = np.arange(len(tokens)) if order is None else np.asarray(order)
    for lo in range(0, len(idx), batch):
        rows = idx[lo:lo + batch]
        for g, w in model.length_groups(tokens[rows], *(a[rows] for a in also), overhead=overhead):
            widths[rows if g is None else rows[g]] = w
    return widths


def _stats(xs):
    xs = sorted(xs)
    return {"median": xs[len(xs) // 2], "worst": xs[-1], "runs": xs}


def _flops(name, m, data, test, args):
    """Analytic FLOPs of a training epoch and of the model's test pass, padded and as run."""
    import numpy as np
    import torch

    x, y = m.train_arrays(data)
    loss_pos = (y != 0) if name == "sasrec" else (y >= 0)
    bs = args.batch_size if name == "sasrec" else args.causal_batch_size
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(1)).numpy()   # the loop's first epoch
    w_run = _group_widths(m, x, loss_pos, batch=bs, order=perm)
    if name == "sasrec":
        D, F_, nb, V = m.hidden, m.ffn or m.hidden, m.n_blocks, data.n_items
        hist = test["history"]
        w_ev = _group_widths(m, hist, batch=1024)
    else:
        D, F_, nb, V = m.hidden, m.ffn or 2 * m.hidden, m.n_layers, m.tokens_.vocab_size
        hist = m._history_grid(test["history"])
        w_ev = _group_widths(m, hist, batch=1024, overhead=m.beam_group_overhead)
    logits = 3 * int(loss_pos.sum()) * 2 * D * V
    fl = {"epoch_padded": 3 * _block_flops(np.full(len(x), x.shape[1]), D, F_, nb) + logits,
          "epoch_trim": 3 * _block_flops(w_run, D, F_, nb) + logits,
          "epoch_real": 3 * _block_flops(real_spans_of(x, loss_pos), D, F_, nb) + logits,
          "epoch_logits": logits}
    B = len(hist)
    if name == "sasrec":
        fl["pass_padded"] = _block_flops(np.full(B, hist.shape[1]), D, F_, nb) + B * 2 * D * V
        fl["pass_trim"] = _block_flops(w_ev, D, F_, nb) + B * 2 * D * V
    else:
        W, beam = m.tokens_.n_levels, m.beam

        def steps(widths):   # W - 1 decoded tokens per beam: matmuls, attention (history + decoded), logits
            w = np.asarray(widths, np.float64)
            return B * 2 * D * V + sum(nb * (2 * D * (4 * D + 2 * F_) * beam * B + 4 * D * beam * (w.sum() + t * B))
                                       + 2 * D * V * beam * B for t in range(1, W))
        fl["pass_padded"] = _block_flops(np.full(B, hist.shape[1]), D, F_, nb) + steps(np.full(B, hist.shape[1]))
        fl["pass_trim"] = _block_flops(w_ev, D, F_, nb) + steps(w_ev)
    return fl


def real_spans_of(x, also):
    import numpy as np

    from sidkit.eval.sequences import real_spans

    return np.maximum(real_spans(x), real_spans(also))


def _set_path(model, after: bool) -> None:
    """``after``: the code of issue 24 (length groups trimmed of padding, SASRec's fused
    softmax loss); ``before``: every batch at its full padded width, the plain loss."""
    model.trim_padding = after
    if hasattr(model, "fused_loss"):
        model.fused_loss = after


def beauty(args) -> None:
    import numpy as np
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from sidkit.data import load_dataset, make_split
    from sidkit.eval import SequenceData
    from sidkit.models import CausalSID, SASRec
    from sidkit.types import Codes

    info = _machine()
    t0 = time.perf_counter()
    inter = load_dataset(str(args.beauty)).interactions
    if args.users:
        from sidkit.data import Interactions

        df = inter.df
        inter = Interactions(df[df["user_id"].isin(df["user_id"].unique()[:args.users])].reset_index(drop=True))
    data = SequenceData.from_split(make_split(inter, "leave_one_out"))
    prep = time.perf_counter() - t0
    if args.codes:
        codes = Codes.load(args.codes / "codes" if (args.codes / "codes.npz").is_file() else args.codes)
    else:
        codes = _random_codes(data.item_ids)
    test = data.eval_inputs("test", 50)
    peak = _sgemm_gflops()
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    out: dict = {"machine": {**info, "torch_threads": torch.get_num_threads(), "sgemm_gflops": peak},
                 "data": {"users": int(len(data.users)), "items": int(data.n_items), "prep_s": prep},
                 "repeat": args.repeat, "models": {}}
    keys = ("train_s", "valid_eval_s", "model_pass_s")

    def fit(name, trim):
        m = SASRec() if name == "sasrec" else CausalSID()
        _set_path(m, trim)
        bs = args.batch_size if name == "sasrec" else args.causal_batch_size
        kw = {"codes": codes} if name == "causal" else {}
        return m.fit(data, train={"epochs": 1, "batch_size": bs, "eval_every": 1}, seed=0, device=args.device,
                     progress=False, **kw)

    def model_pass(m, name):
        t = time.perf_counter()
        res = []
        for lo in range(0, len(test["targets"]), 1024):
            h = test["history"][lo:lo + 1024]
            res.append(m.scores(h) if name == "sasrec" else m.decode(h, 20))
        return time.perf_counter() - t, res

    for name in models:
        rec = {mode: {**{k: [] for k in keys}, "loss": [], "valid_ndcg@10": []} for mode in ("after", "before")}
        agree = []
        for r in range(args.repeat):
            order = ("after", "before") if r % 2 == 0 else ("before", "after")
            if args.after_only:
                order = ("after",)
            for mode in order:
                m = fit(name, mode == "after")
                h = m.history_[0]
                for k, v in (("train_s", h["seconds"]), ("valid_eval_s", h["valid_seconds"]), ("loss", h["loss"]),
                             ("valid_ndcg@10", h["valid"]["ndcg@10"])):
                    rec[mode][k].append(v)
                print(f"[{r}] {name} {mode}: epoch {h['seconds']:.1f} s, validation {h['valid_seconds']:.1f} s, "
                      f"loss {h['loss']:.4f}, valid NDCG@10 {h['valid']['ndcg@10']:.4f}; "
                      f"load {os.getloadavg()[0]:.2f}", flush=True)
            passes = {}
            for mode in order:          # the last model's weights, both paths
                _set_path(m, mode == "after")
                sec, passes[mode] = model_pass(m, name)
                rec[mode]["model_pass_s"].append(sec)
                print(f"[{r}] {name} {mode}: model pass over {len(test['targets'])} test users {sec:.1f} s",
                      flush=True)
            _set_path(m, True)
            if args.after_only:
                continue
            a, b = passes["after"], passes["before"]
            if name == "sasrec":
                top = [(torch.topk(x, 10).indices == torch.topk(y, 10).indices).all(1).numpy() for x, y in zip(a, b)]
                agree.append({"max_abs_score_diff": max(float((x - y).abs().max()) for x, y in zip(a, b)),
                              "same_top10_share": float(np.concatenate(top).mean())})
            else:
                agree.append({"same_beam_lists_share": float(np.concatenate(
                                  [(x.items == y.items).all(1) for x, y in zip(a, b)]).mean()),
                              "max_abs_beam_score_diff": max(float(np.max(np.abs(np.where(
                                  np.isfinite(x.scores), x.scores - y.scores, 0)))) for x, y in zip(a, b))})
        fl = _flops(name, m, data, test, args)
        if args.after_only:
            del rec["before"]
        summ = {mode: {k: _stats(v) for k, v in rec[mode].items()} for mode in rec}
        ratio = {k: {"median": summ["before"][k]["median"] / summ["after"][k]["median"],
                     "worst_pair": min(b / a for a, b in zip(rec["after"][k], rec["before"][k]))}
                 for k in keys} if "before" in rec else {}
        rates = {"epoch_after": fl["epoch_trim"] / summ["after"]["train_s"]["median"] / 1e9,
                 "pass_after": fl["pass_trim"] / summ["after"]["model_pass_s"]["median"] / 1e9}
        if "before" in rec:
            rates.update(epoch_before=fl["epoch_padded"] / summ["before"]["train_s"]["median"] / 1e9,
                         pass_before=fl["pass_padded"] / summ["before"]["model_pass_s"]["median"] / 1e9)
        out["models"][name] = {"runs": rec, "summary": summ, "speedup": ratio, "agreement": agree,
                               "flops": fl, "gflops_per_s": rates}
    try:
        out["machine"]["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"train{args.tag}.json").write_text(json.dumps(out, indent=2) + "\n")
    goals = {("sasrec", "train_s"): "12", ("sasrec", "valid_eval_s"): "4",
             ("causal", "train_s"): "20", ("causal", "valid_eval_s"): "10"}
    names = {"train_s": "training epoch", "valid_eval_s": "evaluate(): 22,363 validation users",
             "model_pass_s": "model only: scores / recommend(20), 22,363 test users"}
    md = [f"# SASRec and causal SID speed on Amazon Beauty{args.tag}", "",
          f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, {torch.get_num_threads()} torch "
          f"thread(s); load average at start {info.get('load_avg_at_start')}, at end "
          f"{out['machine'].get('load_avg_at_end')}; a 1024^3 sgemm runs at {peak:.0f} GFLOP/s in this process.", "",
          f"`python benchmarks/train.py --data beauty --threads {args.threads} --repeat {args.repeat}"
          f"{' --after-only' if args.after_only else ''}{' --tag ' + args.tag if args.tag else ''}`: after (length groups trimmed of padding; SASRec's fused "
          "softmax loss) and before (every batch at its full padded width, the plain loss: the code before "
          "issue 24) interleaved in one process, median (worst) of "
          f"{args.repeat} seconds; speed-up = before / after (median; worst pair).", "",
          "| model | measure | after | before | speed-up | goal, s (quiet, 2 cores) |", "|---|---|---:|---:|---:|---:|"]
    for name, r in out["models"].items():
        for k in keys:
            a, b = r["summary"]["after"][k], r["summary"].get("before", {}).get(k)
            before = (f"{b['median']:.1f} ({b['worst']:.1f}) | {r['speedup'][k]['median']:.2f}x; "
                      f"{r['speedup'][k]['worst_pair']:.2f}x") if b else "- | -"
            md.append(f"| {name} | {names[k]} | {a['median']:.1f} ({a['worst']:.1f}) | {before} "
                      f"| {goals.get((name, k), '')} |")
    md += ["", "Analytic FLOPs (matmuls + attention; backward = 2x forward) and the rate at the median time:", "",
           "| model | step | TFLOP padded | TFLOP as run | TFLOP real only | of which logits | GFLOP/s after "
           "| GFLOP/s before |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, r in out["models"].items():
        f, g = r["flops"], r["gflops_per_s"]
        md.append(f"| {name} | training epoch | {f['epoch_padded'] / 1e12:.3f} | {f['epoch_trim'] / 1e12:.3f} | "
                  f"{f['epoch_real'] / 1e12:.3f} | {f['epoch_logits'] / 1e12:.3f} | {g['epoch_after']:.1f} | "
                  f"{g.get('epoch_before', float('nan')):.1f} |")
        md.append(f"| {name} | test pass | {f['pass_padded'] / 1e12:.3f} | {f['pass_trim'] / 1e12:.3f} | | | "
                  f"{g['pass_after']:.1f} | {g.get('pass_before', float('nan')):.1f} |")
    md += ["", "Agreement of the two paths on the same weights: " + "; ".join(
        f"{name} {r['agreement']}" for name, r in out["models"].items()) + ".", "",
        "First-epoch training loss / validation NDCG@10, same seed (the dropout masks are drawn over the "
        "trimmed tensors, so the two paths' random streams differ): " + "; ".join(
            f"{name}: after {np.median(r['runs']['after']['loss']):.4f} / "
            f"{np.median(r['runs']['after']['valid_ndcg@10']):.4f}" + (
                f", before {np.median(r['runs']['before']['loss']):.4f} / "
                f"{np.median(r['runs']['before']['valid_ndcg@10']):.4f}" if "before" in r["runs"] else "")
            for name, r in out["models"].items()) + ".", ""]
    (args.out / f"train{args.tag}.md").write_text("\n".join(md))
    print("\n".join(md))

if __name__ == "__main__":
    sys.exit(main())
