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
tokens.  The comparison with Hugging Face ``generate`` + ``prefix_allowed_tokens_fn``
on the same trie comes with the TIGER T5 model (issue 10) and is not measured here.
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
    try:
        info["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover
        pass
    out = {"args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
           "machine": info, "sid": repr(sid), "results": rows}
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
    (args.out / f"beam{args.tag}.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
