"""Do the analytic overlap models agree with the Monte-Carlo flip rates? (issue 11)

For each tokenizer (SIDs of ``sidkit run`` on ML-100K with that ``[codes] method``, text
embeddings, default sizes) and each perturbation scale s, ``diagnose`` gives

* the codeword model: ``O`` with Gaussians of width sigma = s x RMS around the codewords;
* the member-distribution model: each code's members crossing the plane half-way to
  another codeword with probability Phi(-margin / sigma) (docs/diagnostics.md);
* the Monte-Carlo figures: re-encode X + sigma z, flip rate per level, SID change rate
  and the empirical overlap O_emp.

and this script prints Spearman rank correlations between the models and the
Monte-Carlo figures over all (tokenizer, scale) points and across tokenizers at each
scale, and writes ``benchmarks/results/overlap_agreement.{md,json}``.

Usage::

    python benchmarks/overlap_agreement.py
    python benchmarks/overlap_agreement.py --tokenizers rqkmeans,gaoq --scales 0.1,0.5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from _common import machine, ml100k_sid_run  # noqa: E402


def spearman(a, b) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizers", default="rqkmeans,hkm,gaoq,drq,rqvae")
    ap.add_argument("--scales", default="0.05,0.1,0.25,0.5,1.0")
    ap.add_argument("--work", type=Path, default=ROOT.parent / "runs" / "results_ml100k")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "overlap_agreement")
    args = ap.parse_args()
    from sidkit.diagnostics import diagnose
    from sidkit.diagnostics.usage import semantic_codes
    from sidkit.tokenizers import Tokenizer
    from sidkit.types import Codes, Embeddings

    scales = [float(s) for s in args.scales.split(",")]
    points = []
    for name in args.tokenizers.split(","):
        run = ml100k_sid_run(name, args.work)
        codes = Codes.load(run / "codes" / "codes")
        tok = Tokenizer.load(run / "codes" / "tokenizer")
        X = Embeddings.load(run / "embeddings").vectors
        res = diagnose(codes, X, tok, scales=scales)
        ov, mc = res["overlap"], res["monte_carlo"]
        n_sem = semantic_codes(codes).n_levels
        for i, s in enumerate(scales):
            run_mc = mc["runs"][i]
            points.append({
                "tokenizer": name, "scale": s, "levels": n_sem,
                "codewords": ov["codewords_source"],
                "O_codeword": ov["sid"]["O"][i], "O_member": ov["member"]["sid"]["O"][i],
                "O_emp": run_mc["sid"]["O_emp"], "sid_change": run_mc["sid_change_rate"],
                "L1_O_codeword": ov["levels"][0]["O"][i], "L1_O_member": ov["member"]["levels"][0]["O"][i],
                "L1_flip_member": ov["member"]["levels"][0]["flip_rate"][i],
                "L1_O_emp": run_mc["levels"][0]["O_emp"], "L1_flip": run_mc["flip_rate"][0],
                "mean_flip_member": float(np.mean([lv["flip_rate"][i] for lv in ov["member"]["levels"]])),
                "mean_flip": float(np.mean(run_mc["flip_rate"])),
            })
            print(f"{name:9s} s={s:<5g} SID O codeword {points[-1]['O_codeword']:.5f} member "
                  f"{points[-1]['O_member']:.5f} MC {points[-1]['O_emp']:.5f} change {points[-1]['sid_change']:.3f} | "
                  f"L1 flip member {points[-1]['L1_flip_member']:.3f} MC {points[-1]['L1_flip']:.3f}", flush=True)

    def col(k, pts=points):
        return [p[k] for p in pts]

    pairs = [("O_codeword", "O_emp"), ("O_member", "O_emp"), ("O_codeword", "sid_change"),
             ("O_member", "sid_change"), ("L1_O_codeword", "L1_flip"), ("L1_O_member", "L1_flip"),
             ("L1_flip_member", "L1_flip"), ("mean_flip_member", "mean_flip")]
    pooled = {f"{a} ~ {b}": spearman(col(a), col(b)) for a, b in pairs}
    per_scale = {}
    for s in scales:
        pts = [p for p in points if p["scale"] == s]
        per_scale[str(s)] = {f"{a} ~ {b}": spearman(col(a, pts), col(b, pts)) for a, b in pairs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = f"python benchmarks/overlap_agreement.py --tokenizers {args.tokenizers} --scales {args.scales}"
    (args.out.with_suffix(".json")).write_text(json.dumps(
        {"command": command, "machine": machine(), "points": points, "spearman_pooled": pooled,
         "spearman_per_scale": per_scale}, indent=1))
    lines = ["# Analytic overlap models vs Monte-Carlo flips (ML-100K, text embeddings)", "",
             f"`{command}`", "",
             "Spearman rank correlation; pooled: all (tokenizer, scale) points; per scale: across the "
             f"{len(args.tokenizers.split(','))} tokenizers.", "",
             "| model figure ~ Monte-Carlo figure | pooled | " + " | ".join(f"s={s:g}" for s in scales) + " |",
             "|---|---:|" + "---:|" * len(scales)]
    for key, v in pooled.items():
        lines.append(f"| {key} | {v:.2f} | " + " | ".join(f"{per_scale[str(s)][key]:.2f}" for s in scales) + " |")
    lines += ["", "| tokenizer | s | SID O codeword | SID O member | SID O_emp (MC) | SID change (MC) | "
              "L1 flip member | L1 flip (MC) | mean flip member | mean flip (MC) |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        lines.append(f"| {p['tokenizer']} | {p['scale']:g} | {p['O_codeword']:.5f} | {p['O_member']:.5f} | "
                     f"{p['O_emp']:.5f} | {p['sid_change']:.3f} | {p['L1_flip_member']:.3f} | {p['L1_flip']:.3f} | "
                     f"{p['mean_flip_member']:.3f} | {p['mean_flip']:.3f} |")
    (args.out.with_suffix(".md")).write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:8 + len(pairs)]))


if __name__ == "__main__":
    main()
