"""Speed of SID beam search: constrained (trie) vs unconstrained, ms per user (SPEC 8).

Usage::

    python benchmarks/beam.py                      # beams 20 and 50, 256 users
    python benchmarks/beam.py --users 128 --items 1682 --codebook 64 --levels 3 --tag _small

Two models, each decoded at every beam width with ``constrained=True`` and ``False``
(the same code path; only the trie masking differs), in ONE process, the two
alternating within each of ``--repeat`` rounds, fastest round kept:

- ``table``: a zero-cost model whose log-probs are a fixed random table indexed by
  the last token -- isolates the search itself (candidate gathering, top-k, reorder);
- ``causal``: a small random causal transformer (``nn.TransformerEncoder`` with a
  causal mask, d_model ``--d-model``, ``--layers`` layers) over the user's flattened
  SID history (last ``--history`` items) plus the tokens decoded so far.  Its step is
  KV-cache free: it recomputes the whole sequence for every beam at every step, so it
  is a stand-in for the model cost, not a measure of a tuned model.

SIDs: ``--items`` random distinct codes over ``--levels`` levels of ``--codebook``
tokens.

``--models tiger_hf``: our decoding of a random-init TIGER T5 (:class:`sidkit.models.TIGER`,
default size: d_model 128, 4+4 layers, 6 heads, history 20 items, user tokens) against
Hugging Face ``generate(num_beams=beam, num_return_sequences=k,
prefix_allowed_tokens_fn=...)`` on the **same** T5 weights and inputs, constrained to
the same trie (the callback looks the decoded prefix up in a dict of allowed next
tokens, built once), ``length_penalty=0`` so HF scores are sums of log-probs, and
``max_new_tokens = levels``.  For each ``--hf-shapes`` catalogue (``ITEMSxLEVELSxK``)
and ``--hf-users`` size, ``--repeat`` rounds alternate ours / HF (batches of
``--batch`` users; one untimed warm-up call each first); reported: median and worst wall time, the ratio ours / HF of
the medians, and the share of users whose top-k item set (and order) agree.

The machine is shared: the load average at the start and end is recorded; compare
ratios within one run.  Writes ``benchmarks/results/beam{tag}.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from _common import machine as _machine


def random_codes(n, levels, k, seed=0):
    from sidkit.types import Codes

    rs = np.random.default_rng(seed)
    c = np.unique(rs.integers(0, k, size=(3 * n, levels)), axis=0)
    c = c[rs.permutation(len(c))[:n]]
    return Codes(c, (k,) * levels)


class TableModel:
    """log-probs = a random (V, V) table row of the last token (users: a row each at step 0)."""

    def __init__(self, V, n_users, seed=0):
        import torch

        g = torch.Generator().manual_seed(seed)
        self.T = torch.log_softmax(torch.randn(V, V, generator=g), -1)
        self.U = torch.log_softmax(torch.randn(n_users, V, generator=g), -1)

    def step(self, tokens, state):
        if tokens.shape[1] == 0:
            return self.U[: tokens.shape[0]], state
        return self.T[tokens[:, -1]], state


class CausalModel:
    """A tiny causal transformer; KV-cache free (recomputes history + prefix per row)."""

    def __init__(self, V, d, layers, heads, max_len, seed=0):
        import torch
        from torch import nn

        torch.manual_seed(seed)
        self.emb = nn.Embedding(V, d)
        self.pos = nn.Embedding(max_len, d)
        layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False).eval()
        self.out = nn.Linear(d, V)

    def step(self, tokens, state):
        import torch

        from sidkit.models import beam_users

        hist = state["history"]                          # (B, T) shared per user
        users = beam_users(tokens.shape[0], hist.shape[0])
        x = torch.cat([hist[users], tokens.to(hist.device)], 1)
        L = x.shape[1]
        mask = torch.triu(torch.full((L, L), float("-inf")), 1)
        with torch.inference_mode():
            h = self.emb(x) + self.pos.weight[:L]
            h = self.enc(h, mask=mask, is_causal=True)
            return torch.log_softmax(self.out(h[:, -1]), -1), state


def _parse_shape(s: str) -> tuple[int, int, int]:
    try:
        n, levels, k = (int(x) for x in s.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--hf-shapes: {s!r} is not ITEMSxLEVELSxK (e.g. 1682x3x64)") from None
    return n, levels, k


def tiger_vs_hf(args) -> list[dict]:
    """Our KV-cached constrained beam search vs HF generate + prefix_allowed_tokens_fn (module doc)."""
    import torch

    from sidkit.eval.sequences import pad_left
    from sidkit.models import TIGER, SIDTokens
    from sidkit.models.sid_tokens import BOS, EOS, PAD, TIGER_USER_BUCKETS
    from sidkit.models.tiger import _enc_mask

    rows = []
    for shape in args.hf_shapes:
        n_items, levels, kcb = _parse_shape(shape)
        codes = random_codes(n_items, levels, kcb)
        model = TIGER(max_len=args.history)
        model.tokens_ = SIDTokens(codes, user_buckets=TIGER_USER_BUCKETS)
        model.device_ = torch.device("cpu")
        torch.manual_seed(0)
        model.module_ = model.build_module(n_items).eval()
        t5 = model.module_.t5
        sid = model.tokens_
        W = sid.n_levels
        allowed: dict[tuple, list[int]] = {}                    # decoded prefix -> allowed next tokens
        for lvl in range(W):
            for row in np.unique(sid.item_tokens[:, :lvl + 1], axis=0):
                allowed.setdefault(tuple(row[:-1].tolist()), []).append(int(row[-1]))

        def prefix_fn(batch_id, input_ids):
            return allowed.get(tuple(input_ids[1:].tolist()), [PAD])

        rs = np.random.default_rng(1)
        n_max = max(args.hf_users)
        hist_all = pad_left(rs.integers(1, n_items + 1, size=(n_max, args.history)).tolist(), args.history)
        users_all = np.array([f"u{i}" for i in range(n_max)])
        beam, k = args.hf_beam, min(args.hf_k, args.hf_beam)

        def ours(hist, users):
            return model.decode(hist, k, users=users, beam=beam)

        def hf(hist, users):
            enc = torch.as_tensor(model.encoder_tokens(hist, users))
            with torch.inference_mode():
                out = t5.generate(input_ids=enc, attention_mask=_enc_mask(enc), num_beams=beam,
                                  num_return_sequences=k, max_new_tokens=W, min_new_tokens=W,
                                  prefix_allowed_tokens_fn=prefix_fn, length_penalty=0.0, early_stopping=True,
                                  do_sample=False, use_cache=True, decoder_start_token_id=BOS,
                                  eos_token_id=EOS, pad_token_id=PAD, output_scores=True,
                                  return_dict_in_generate=True)
            seqs = out.sequences[:, 1:1 + W].numpy()
            return sid.items_of(seqs).reshape(len(hist), k), out.sequences_scores.numpy().reshape(len(hist), k)

        ours(hist_all[:args.batch], users_all[:args.batch])       # warm-up (lazy tables, allocator), untimed
        hf(hist_all[:args.batch], users_all[:args.batch])
        for n_users in args.hf_users:
            hist, users = hist_all[:n_users], users_all[:n_users]
            t_ours, t_hf = [], []
            for _ in range(args.repeat):
                got_o, got_h = [], []
                t0 = time.perf_counter()
                for s in range(0, n_users, args.batch):
                    got_o.append(ours(hist[s:s + args.batch], users[s:s + args.batch]))
                t_ours.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                for s in range(0, n_users, args.batch):
                    got_h.append(hf(hist[s:s + args.batch], users[s:s + args.batch]))
                t_hf.append(time.perf_counter() - t0)
            items_o = np.vstack([r.items for r in got_o])
            scores_o = np.vstack([r.scores for r in got_o])
            items_h = np.vstack([g[0] for g in got_h])
            scores_h = np.vstack([g[1] for g in got_h])
            same_set = np.mean([set(a) == set(b) for a, b in zip(items_o.tolist(), items_h.tolist())])
            same_order = float((items_o == items_h).all(1).mean())
            rec = {"model": "tiger_t5", "shape": shape, "sid": repr(sid), "users": n_users, "beam": beam, "k": k,
                   "ours_s_median": float(np.median(t_ours)), "ours_s_worst": float(max(t_ours)),
                   "hf_s_median": float(np.median(t_hf)), "hf_s_worst": float(max(t_hf)),
                   "ours_ms_per_user": 1000 * float(np.median(t_ours)) / n_users,
                   "hf_ms_per_user": 1000 * float(np.median(t_hf)) / n_users,
                   "ratio_ours_over_hf": float(np.median(t_ours) / np.median(t_hf)),
                   "all_ours_s": [round(t, 3) for t in t_ours], "all_hf_s": [round(t, 3) for t in t_hf],
                   "topk_set_agreement": float(same_set), "topk_order_agreement": same_order,
                   "max_abs_score_diff": float(np.nanmax(np.abs(scores_o - scores_h))),
                   "hf_invalid_rate": float((items_h < 0).mean())}
            rows.append(rec)
            print(json.dumps(rec), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64, help="users per beam_search call")
    ap.add_argument("--items", type=int, default=1682)
    ap.add_argument("--levels", type=int, default=3)
    ap.add_argument("--codebook", type=int, default=64)
    ap.add_argument("--beams", type=int, nargs="+", default=[20, 50])
    ap.add_argument("--history", type=int, default=20, help="items of history for the causal model")
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--models", nargs="+", default=["table", "causal", "tiger_hf"],
                    choices=["table", "causal", "tiger_hf"])
    ap.add_argument("--hf-users", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--hf-shapes", nargs="+", default=["1682x3x64", "1682x4x24"],
                    help="catalogues ITEMSxLEVELSxK for the TIGER vs HF generate comparison")
    ap.add_argument("--hf-beam", type=int, default=20)
    ap.add_argument("--hf-k", type=int, default=10)
    ap.add_argument("--tag", default="")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = ap.parse_args()

    import torch

    from sidkit.eval.sequences import pad_left
    from sidkit.models import SIDTokens, beam_search

    if args.threads:
        torch.set_num_threads(args.threads)
    info = _machine()
    sid = SIDTokens(random_codes(args.items, args.levels, args.codebook))
    rs = np.random.default_rng(1)
    hist_items = rs.integers(1, sid.n_items + 1, size=(args.users, args.history))
    hist = torch.as_tensor(sid.history_tokens(pad_left(hist_items.tolist(), args.history)))
    models = {
        "table": (TableModel(sid.vocab_size, args.batch), lambda s, e: None),
        "causal": (CausalModel(sid.vocab_size, args.d_model, args.layers, args.heads,
                               hist.shape[1] + args.levels + 1), lambda s, e: {"history": hist[s:e]}),
    }
    models = {m: v for m, v in models.items() if m in args.models}
    rows = []
    for name, (model, make_state) in models.items():
        for beam in args.beams:
            times = {True: [], False: []}
            invalid = {True: [], False: []}
            for _ in range(args.repeat):                   # alternate, so load drift hits both alike
                for constrained in (True, False):
                    t0 = time.perf_counter()
                    for s in range(0, args.users, args.batch):
                        e = min(args.users, s + args.batch)
                        res = beam_search(model.step, make_state(s, e), sid, e - s, beam=beam,
                                          constrained=constrained)
                        invalid[constrained].append(res.invalid_rate())
                    times[constrained].append(time.perf_counter() - t0)
            for constrained in (True, False):
                rows.append({"model": name, "beam": beam, "constrained": constrained,
                             "ms_per_user": 1000 * min(times[constrained]) / args.users,
                             "all_ms_per_user": [round(1000 * t / args.users, 3) for t in times[constrained]],
                             "invalid_rate": float(np.mean(invalid[constrained]))})
                print(json.dumps(rows[-1]), flush=True)
    for r in rows:
        if r["constrained"]:
            u = next(x for x in rows if x["model"] == r["model"] and x["beam"] == r["beam"] and not x["constrained"])
            r["constraint_overhead"] = r["ms_per_user"] / u["ms_per_user"] - 1
    hf_rows = tiger_vs_hf(args) if "tiger_hf" in args.models else []
    try:
        info["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    out = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "machine": info, "sid": repr(sid), "results": rows, "tiger_vs_hf": hf_rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"beam{args.tag}.json").write_text(json.dumps(out, indent=2))
    md = [f"# Beam search speed ({sid!r})", "",
          f"{args.users} users in batches of {args.batch}; machine: {info.get('cpu')}, "
          f"{info.get('cores')} cores, load {info.get('load_avg_at_start')} -> {info.get('load_avg_at_end')}", "",
          "| model | beam | constrained ms/user | unconstrained ms/user | constraint overhead | invalid rate (unconstrained) |",
          "|---|---|---|---|---|---|"]
    for r in rows:
        if r["constrained"]:
            u = next(x for x in rows if x["model"] == r["model"] and x["beam"] == r["beam"] and not x["constrained"])
            md.append(f"| {r['model']} | {r['beam']} | {r['ms_per_user']:.3f} | {u['ms_per_user']:.3f} | "
                      f"{100 * r['constraint_overhead']:+.1f}% | {u['invalid_rate']:.3f} |")
    if hf_rows:
        md += ["", f"## TIGER T5 (random init): ours vs Hugging Face generate + prefix_allowed_tokens_fn "
               f"(beam {args.hf_beam}, k {args.hf_k}, {args.repeat} rounds, batches of {args.batch} users)", "",
               "| catalogue | users | ours s (median / worst) | HF s (median / worst) | ours ms/user | HF ms/user "
               "| ours / HF | top-k set agree | top-k order agree | max score diff |",
               "|---|---|---|---|---|---|---|---|---|---|"]
        for r in hf_rows:
            md.append(f"| {r['shape']} | {r['users']} | {r['ours_s_median']:.2f} / {r['ours_s_worst']:.2f} | "
                      f"{r['hf_s_median']:.2f} / {r['hf_s_worst']:.2f} | {r['ours_ms_per_user']:.2f} | "
                      f"{r['hf_ms_per_user']:.2f} | {r['ratio_ours_over_hf']:.3f} | "
                      f"{100 * r['topk_set_agreement']:.1f}% | {100 * r['topk_order_agreement']:.1f}% | "
                      f"{r['max_abs_score_diff']:.1e} |")
    (args.out / f"beam{args.tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
