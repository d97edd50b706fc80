"""Issue 11, study 4 (seed 000's three axes): do the SID diagnostics rank tokenizers the
way downstream NDCG@10 does?

For every tokenizer with a ``causal_sid@TOKENIZER`` row in ``docs/results.json`` (written
by ``benchmarks/results_ml100k.py``; ``METHOD-KxL`` rows such as ``rqkmeans-256x3`` are SID
sets of their own), reads the diagnostics of the same SIDs (``sidkit run``
with that ``[codes] method`` in ``--work/sids-TOKENIZER``, recomputed when stale) and
prints Spearman's rank correlation, across tokenizers, between each diagnostic and the
**validation** NDCG@10 of the causal SID model (mean over its seeds), which decides which
diagnostics agree, with the correlation against test NDCG@10 reported beside it
(docs/evaluation.md, "Choosing on validation"):

* symbolic robustness: K_eff of the whole SID (codeword model and member-distribution
  model) and the Monte-Carlo SID change rate under perturbation;
* reconstruction fidelity: relative MSE of the semantic levels;
* behaviour-aware soft matching: AUC of co-engaged vs random item pairs;
* and, for reference, the semantic collision share and the normalised entropy.

Writes ``benchmarks/results/diagnostics_vs_ndcg.{md,json}``.

Usage::

    python benchmarks/diagnostics_vs_ndcg.py [--scale 0.25]
    # the diagnostics of an earlier output (they do not depend on the recommender), NDCG@10 re-read:
    python benchmarks/diagnostics_vs_ndcg.py --diagnostics-from benchmarks/results/diagnostics_vs_ndcg.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from _common import ml100k_sid_run  # noqa: E402


def spearman_critical(n: int, alpha: float = 0.05) -> float:
    """Smallest rho with P(rho_null >= rho) <= alpha (one-sided): exact, by enumerating
    every permutation, for n <= 9; the normal approximation z / sqrt(n - 1) beyond."""
    import itertools

    import numpy as np

    if n > 9:
        from scipy.stats import norm

        return float(norm.ppf(1 - alpha) / np.sqrt(n - 1))
    perms = np.array(list(itertools.permutations(range(n))))
    rho = 1 - 6 * ((perms - np.arange(n)) ** 2).sum(1) / (n * (n * n - 1))
    vals = np.unique(np.round(rho, 12))
    tail = np.array([(rho >= v - 1e-12).mean() for v in vals])
    ok = vals[tail <= alpha]
    return float(ok.min()) if ok.size else float("inf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, default=ROOT.parent / "docs" / "results.json")
    ap.add_argument("--work", type=Path, default=ROOT.parent / "runs" / "results_ml100k")
    ap.add_argument("--scale", type=float, default=0.25, help="perturbation scale of the scale-dependent figures")
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "diagnostics_vs_ndcg")
    ap.add_argument("--diagnostics-from", type=Path, default=None,
                    help="reuse the diagnostics of the SID sets in this earlier output (JSON) instead of "
                         "recomputing the SIDs; only those SID sets are ranked")
    args = ap.parse_args()
    from scipy.stats import spearmanr

    res = json.loads(args.results.read_text())
    keep = ("tokenizer", "seeds", "valid_ndcg@10", "valid_ndcg@10_std", "ndcg@10", "ndcg@10_std")
    earlier = ({r["tokenizer"]: {k: v for k, v in r.items() if k not in keep}
                for r in json.loads(args.diagnostics_from.read_text())["rows"]} if args.diagnostics_from else None)
    rows = []
    for label, summ in res["summary"].items():
        if not label.startswith("causal_sid@"):
            continue
        tok = label.split("@", 1)[1]
        ndcg = {"tokenizer": tok, "seeds": summ["n_seeds"],
                "valid_ndcg@10": summ["valid"]["ndcg@10"]["mean"], "valid_ndcg@10_std": summ["valid"]["ndcg@10"]["std"],
                "ndcg@10": summ["test"]["ndcg@10"]["mean"], "ndcg@10_std": summ["test"]["ndcg@10"]["std"]}
        if earlier is not None:
            if tok in earlier:
                rows.append(ndcg | earlier[tok])
            continue
        run = ml100k_sid_run(tok, args.work)
        head = json.loads((run / "diagnostics" / "meta.json").read_text())["summary"]
        codes = json.loads((run / "codes" / "meta.json").read_text()).get("summary", {})
        scales = head["overlap_scales"]
        if args.scale not in scales:
            raise SystemExit(f"scale {args.scale} not among the run's perturbation scales {scales}")
        i = scales.index(args.scale)
        sem = codes.get("semantic_collisions") or codes.get("collisions") or {}
        levels = codes.get("levels") or []
        if codes.get("collision_rule", "none") != "none":
            levels = levels[:-1]
        rows.append(ndcg | {
            "k_eff_codeword": head["sid_k_eff"][i], "k_eff_member": head["sid_k_eff_member"][i],
            "sid_change_mc": head["sid_change_rate"][str(args.scale)],
            "rel_mse": head["rel_mse"], "soft_matching_auc": head["soft_matching_auc"],
            "semantic_collision_share": sem.get("share_in_collision"),
            "min_norm_entropy": min(lv["norm_entropy"] for lv in levels) if levels else None,
        })
    rows.sort(key=lambda r: -r["valid_ndcg@10"])
    # the direction in which each diagnostic is "better"
    better = {"k_eff_codeword": +1, "k_eff_member": +1, "sid_change_mc": -1, "rel_mse": -1,
              "soft_matching_auc": +1, "semantic_collision_share": -1, "min_norm_entropy": +1}
    def agreement(col: str) -> dict[str, float]:
        nd = [r[col] for r in rows]
        return {k: float(sign * spearmanr([r[k] for r in rows], nd).statistic) for k, sign in better.items()}

    corr_valid, corr = agreement("valid_ndcg@10"), agreement("ndcg@10")
    command = f"python benchmarks/diagnostics_vs_ndcg.py --scale {args.scale}" + \
        (f" --diagnostics-from {args.diagnostics_from}" if args.diagnostics_from else "")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows,
                                                          "spearman_better_vs_valid_ndcg": corr_valid,
                                                          "spearman_better_vs_ndcg": corr}, indent=1))
    lines = [f"# SID diagnostics vs downstream NDCG@10 (ML-100K, causal SID model, s = {args.scale:g})", "",
             f"`{command}`", "",
             "| tokenizer | seeds | valid NDCG@10 (decides) | test NDCG@10 | K_eff (codeword) | K_eff (member) | SID change (MC) | rel. MSE | "
             "soft-match AUC | items in a semantic collision | min H/log2K |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['tokenizer']} | {r['seeds']} | {r['valid_ndcg@10']:.4f} ± {r['valid_ndcg@10_std']:.4f} | "
                     f"{r['ndcg@10']:.4f} ± {r['ndcg@10_std']:.4f} | "
                     f"{r['k_eff_codeword']:.0f} | {r['k_eff_member']:.0f} | {r['sid_change_mc']:.3f} | "
                     f"{r['rel_mse']:.3f} | {r['soft_matching_auc']:.3f} | {r['semantic_collision_share']:.3f} | "
                     f"{r['min_norm_entropy']:.2f} |")
    lines += ["", "Spearman rank correlation across tokenizers between each diagnostic (signed so that "
              "+1 = the diagnostic's 'better' direction ranks tokenizers exactly as NDCG@10 does) and NDCG@10; "
              "the agreement with validation NDCG@10 decides, the one with test is reported beside it:", "",
              "| diagnostic | agreement with valid NDCG@10 (decides) | agreement with test NDCG@10 |",
              "|---|---:|---:|"]
    lines += [f"| {k} | {corr_valid[k]:+.2f} | {v:+.2f} |" for k, v in corr.items()]
    n = len(rows)
    crit = spearman_critical(n)
    lines += ["", f"{n} SID sets: with n = {n}, a Spearman coefficient must reach {crit:.3f} to be significant "
                  "at 5% (one-sided; exact null distribution up to n = 9), so only strong agreement counts."]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
