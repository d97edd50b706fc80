"""Diagnostics report: one self-contained HTML page + ``report.json`` + ``report.md``.

Plots are matplotlib (Agg canvas, no pyplot global state) PNGs inlined as base64;
CSS is inline; the page references no external URL.  Several tokenizers are shown
side by side.  All files are written atomically.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..errors import DataError
from ..io import to_json, write_text
from ..types import Codes

#: section ids of the HTML page, in order
SECTIONS = ("summary", "hourglass", "usage", "lorenz", "prefix", "fidelity", "overlap",
            "monte-carlo", "codewords", "soft-matching", "collisions", "timing")

_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;line-height:1.4;padding:0 1em}
h1{border-bottom:2px solid #444}h2{margin-top:2em;border-bottom:1px solid #bbb}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:13px}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}caption{text-align:left;font-weight:bold;padding:4px 0}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0}.verdict{background:#fff7e0;border-left:4px solid #e0a000;
padding:.5em 1em;margin:.5em 0}.ok{background:#eef8ee;border-left-color:#3a3}.na{color:#888;font-style:italic}
.note{color:#555;font-size:13px}
"""

_MARK = ["o", "s", "^", "D", "v", "P"]
_LS = ["-", "--", ":", "-.", "-", "--"]
_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


# ---------------------------------------------------------------- helpers
def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if math.isnan(v):
            return "–"
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3e}"
        return f"{v:.4g}"
    return str(v)


class _Table:
    def __init__(self, caption: str, header: list[str], rows: list[list[Any]]):
        self.caption, self.header, self.rows = caption, header, rows

    def html(self) -> str:
        h = "".join(f"<th>{html.escape(str(c))}</th>" for c in self.header)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in r) + "</tr>"
                       for r in self.rows)
        return (f"<table><caption>{html.escape(self.caption)}</caption><thead><tr>{h}</tr></thead>"
                f"<tbody>{body}</tbody></table>")

    def md(self) -> str:
        esc = lambda x: str(x).replace("|", "\\|")  # noqa: E731
        lines = [f"**{self.caption}**", "", "| " + " | ".join(esc(h) for h in self.header) + " |",
                 "|" + "---|" * len(self.header)]
        lines += ["| " + " | ".join(esc(_fmt(c)) for c in r) + " |" for r in self.rows]
        return "\n".join(lines) + "\n"


def _png(fig) -> str:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figure(n_panels: int, width: float = 4.0, height: float = 3.0):
    from matplotlib.figure import Figure

    n = max(1, n_panels)
    fig = Figure(figsize=(width * n, height), layout="constrained")
    axes = [fig.add_subplot(1, n, i + 1) for i in range(n)]
    return fig, axes


def _img(fig, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{_png(fig)}">'


def _max_levels(res: Mapping[str, dict]) -> int:
    return max(r["meta"]["n_levels"] for r in res.values())


def _col(i: int) -> str:
    return _COLORS[i % len(_COLORS)]


def _normalise(results: Mapping[str, Any], diagnose_kwargs: dict[str, Any]) -> dict[str, dict]:
    from .core import diagnose, to_plain

    out = {}
    for name, val in results.items():
        if isinstance(val, Codes):
            out[name] = diagnose(val, **diagnose_kwargs)
        elif isinstance(val, Mapping) and "usage" in val and "meta" in val:
            out[name] = to_plain(dict(val))
        elif isinstance(val, Mapping) and "codes" in val:
            out[name] = diagnose(**{**diagnose_kwargs, **dict(val)})
        else:
            raise DataError(f"report entry {name!r} is neither a diagnose() result nor inputs",
                            "pass diagnose(...) output, a Codes object or a dict with 'codes'")
    if not out:
        raise DataError("write_report needs at least one result", "pass the result of diagnose() for one or more codes")
    return out


# ---------------------------------------------------------------- sections
def _summary(res: dict[str, dict]) -> list[_Table]:
    rows = []
    for name, r in res.items():
        m, u = r["meta"], r["usage"]
        fid = r.get("fidelity") or {}
        lv = [x for x in (fid.get("levels") or []) if x]
        pm = fid.get("prefix_mean") or []
        ov = r.get("overlap") or {}
        mc = r.get("monte_carlo") or {}
        sm = r.get("soft_matching") or {}
        i_s = _scale_index(ov.get("scales"), 0.1)
        j_s = _scale_index(mc.get("scales"), 0.1)
        rows.append([
            name, m["method"], m["n_items"], "x".join(str(k) for k in m["codebook_sizes"]),
            " / ".join(f"{x['norm_entropy']:.2f}" for x in u),
            " / ".join(f"{x['perplexity']:.1f}" for x in u),
            _sem_coll(r)["share_in_collision"],
            r["collisions"]["share_in_collision"],
            lv[-1]["rel_mse"] if lv else None,
            pm[-1]["rel_mse"] if pm else None,
            ov["sid"]["K_eff"][i_s] if ov and i_s is not None and ov.get("sid") else None,
            mc["runs"][j_s]["sid_change_rate"] if mc and j_s is not None else None,
            sm.get("auc"),
            r["hourglass"]["detected"],
        ])
    return [_Table("Summary (scale-dependent columns at s = 0.1)",
                   ["tokenizer", "method", "items", "K", "norm. entropy per level",
                    "perplexity per level", "items in a semantic collision",
                    "items in a final-SID collision", "rel. MSE (tokenizer)",
                    "rel. MSE (prefix mean)", "SID K_eff", "MC SID change", "soft-match AUC",
                    "hourglass"], rows)]


def _scale_index(scales: list | None, target: float) -> int | None:
    if not scales:
        return None
    arr = np.asarray(scales, dtype=float)
    return int(np.argmin(np.abs(arr - target)))


def _usage_tables(res: dict[str, dict]) -> list[_Table]:
    rows = []
    for name, r in res.items():
        for u in r["usage"]:
            rows.append([name, u["level"], u["K"], u["used"], u["entropy_bits"], u["norm_entropy"],
                         u["perplexity"], u["gini"], u["std_counts"], u["top1pct_share"],
                         u["inverse_simpson"]])
    return [_Table("Usage per level", ["tokenizer", "level", "K", "used", "H (bits)", "H/log2 K",
                                       "perplexity 2^H", "Gini", "std counts", "top-1% share",
                                       "inverse Simpson"], rows)]


def _usage_plot(res: dict[str, dict]) -> str | None:
    L = _max_levels(res)
    if not any("counts" in u for r in res.values() for u in r["usage"]):
        return None
    fig, axes = _figure(L)
    for i, (name, r) in enumerate(res.items()):
        for u in r["usage"]:
            if "counts" not in u:
                continue
            c = np.sort(np.asarray(u["counts"]))[::-1]
            axes[u["level"] - 1].step(np.arange(1, c.size + 1), np.maximum(c, 0.5), where="mid",
                                      color=_col(i), label=name)
    for l, ax in enumerate(axes):
        ax.set_yscale("log")
        ax.set_title(f"level {l + 1}: codes sorted by use")
        ax.set_xlabel("rank")
        ax.set_ylabel("items")
    axes[0].legend(fontsize=8)
    return _img(fig, "usage histograms")


def _lorenz_plot(res: dict[str, dict]) -> str | None:
    if not any("counts" in u for r in res.values() for u in r["usage"]):
        return None
    L = _max_levels(res)
    fig, axes = _figure(L, 3.3, 3.3)
    for i, (name, r) in enumerate(res.items()):
        for u in r["usage"]:
            if "counts" not in u:
                continue
            c = np.sort(np.asarray(u["counts"], dtype=float))
            cum = np.concatenate([[0.0], np.cumsum(c)]) / max(c.sum(), 1)
            x = np.linspace(0, 1, cum.size)
            axes[u["level"] - 1].plot(x, cum, color=_col(i), label=f"{name} (G={u['gini']:.2f})")
    for l, ax in enumerate(axes):
        ax.plot([0, 1], [0, 1], color="#999", lw=0.8, ls=":")
        ax.set_title(f"Lorenz curve, level {l + 1}")
        ax.set_xlabel("share of codes")
        ax.set_ylabel("share of items")
        ax.legend(fontsize=7)
    return _img(fig, "Lorenz curves")


def _prefix_tables(res: dict[str, dict]) -> list[_Table]:
    rows = []
    for name, r in res.items():
        for p in r["prefix"]:
            rows.append([name, p["level"], p["cond_entropy_bits"], p["norm_cond_entropy"],
                         p["n_parents"], p["children_mean"], p["children_min"], p["children_max"],
                         p["n_prefixes"], p["path_capacity"], p["path_sparsity"]])
    return [_Table("Prefix structure", ["tokenizer", "level", "H(c_l | c_<l) bits", "/ log2 K",
                                        "parents", "children mean", "min", "max",
                                        "distinct prefixes", "min(N, prod K)", "path sparsity"],
                   rows)]


def _fanout_plot(res: dict[str, dict]) -> str:
    L = _max_levels(res)
    fig, axes = _figure(L)
    nt = len(res)
    for i, (name, r) in enumerate(res.items()):
        for p in r["prefix"]:
            h = np.asarray(p["children_hist"], dtype=float)
            x = np.arange(h.size)
            w = 0.8 / nt
            axes[p["level"] - 1].bar(x + (i - (nt - 1) / 2) * w, h, width=w, color=_col(i), label=name)
    for l, ax in enumerate(axes):
        ax.set_title(f"fan-out into level {l + 1}")
        ax.set_xlabel("children per parent")
        ax.set_ylabel("parents")
    axes[0].legend(fontsize=8)
    return _img(fig, "prefix fan-out")


def _fidelity(res: dict[str, dict]) -> tuple[list[_Table], str | None]:
    rows = []
    any_data = False
    fig, axes = _figure(2, 4.5, 3.2)
    for i, (name, r) in enumerate(res.items()):
        f = r.get("fidelity")
        if not f:
            continue
        any_data = True
        pm = f.get("prefix_mean") or []
        for l in range(max(len(f.get("levels") or []), len(pm))):
            t = (f.get("levels") or [None] * (l + 1))[l]
            p = pm[l] if l < len(pm) else None
            rows.append([name, l + 1, f.get("source"), t and t["rel_mse"], t and t["cosine"],
                         p and p["rel_mse"], p and p["cosine"]])
        tl = [(x["level"], x["rel_mse"]) for x in (f.get("levels") or []) if x]
        if tl:
            axes[0].plot(*zip(*tl), "o-", color=_col(i), label=f"{name} ({f.get('source')})")
        if pm:
            axes[0].plot([x["level"] for x in pm], [x["rel_mse"] for x in pm], "s--", color=_col(i),
                         alpha=0.6, label=f"{name} (prefix mean)")
            axes[1].plot([x["level"] for x in pm], [x["cosine"] for x in pm], "s--", color=_col(i),
                         alpha=0.6, label=f"{name} (prefix mean)")
        if tl:
            axes[1].plot([x["level"] for x in f["levels"] if x],
                         [x["cosine"] for x in f["levels"] if x], "o-", color=_col(i), label=name)
    if not any_data:
        return [], None
    axes[0].set_title("relative reconstruction MSE after level l")
    axes[1].set_title("mean cosine(x, x_hat_l)")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.set_xlabel("level")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    return ([_Table("Fidelity after each level", ["tokenizer", "level", "source",
                                                  "rel. MSE", "cosine", "rel. MSE (prefix mean)",
                                                  "cosine (prefix mean)"], rows)],
            _img(fig, "per-level MSE"))


def _overlap(res: dict[str, dict]) -> tuple[list[_Table], str | None]:
    rows = []
    fig, axes = _figure(2, 4.8, 3.4)
    any_data = False
    for i, (name, r) in enumerate(res.items()):
        ov = r.get("overlap")
        if not ov:
            continue
        any_data = True
        sc = ov["scales"]
        for lv in ov["levels"]:
            rows.append([name, f"level {lv['level']}", ov["codewords_source"]] + list(lv["K_eff"]))
            axes[0].plot(sc, lv["K_eff"], color=_col(i), marker=_MARK[(lv["level"] - 1) % len(_MARK)],
                         ls=_LS[(lv["level"] - 1) % len(_LS)], label=f"{name} L{lv['level']}")
        if ov.get("sid"):
            s = ov["sid"]
            rows.append([name, "SID" + ("" if s["exact"] else " (sampled)"), ov["codewords_source"]]
                        + list(s["K_eff"]))
            axes[1].plot(sc, s["K_eff"], "o-", color=_col(i), label=f"{name} SID (codeword model)")
        mem = ov.get("member")
        if mem:
            for lv in mem["levels"]:
                rows.append([name, f"level {lv['level']}", "member model"] + list(lv["K_eff"]))
            if mem.get("sid"):
                rows.append([name, "SID" + ("" if mem["sid"]["exact"] else " (sampled)"), "member model"]
                            + list(mem["sid"]["K_eff"]))
                axes[1].plot(sc, mem["sid"]["K_eff"], "s:", color=_col(i), label=f"{name} SID (member model)")
        mc = r.get("monte_carlo")
        if mc:
            axes[1].plot(mc["scales"], [x["sid"]["K_eff_emp"] for x in mc["runs"]], "x--",
                         color=_col(i), label=f"{name} SID (Monte Carlo)")
    if not any_data:
        return [], None
    scales = next(r["overlap"]["scales"] for r in res.values() if r.get("overlap"))
    for ax, t in zip(axes, ("K_eff per level (Bhattacharyya model)", "whole-SID K_eff")):
        ax.set_xlabel("perturbation scale s (x data RMS)")
        ax.set_ylabel("K_eff = 1/O")
        ax.set_yscale("log")
        ax.set_title(t)
        ax.legend(fontsize=7)
    return ([_Table("Effective capacity K_eff = 1/O vs perturbation scale s (codeword model: "
                    "Gaussians around the codewords; member model: each code's members, perturbed)",
                    ["tokenizer", "what", "kernel / codewords"] + [f"s={s:g}" for s in scales], rows)],
            _img(fig, "overlap vs perturbation scale"))


def _monte_carlo(res: dict[str, dict]) -> tuple[list[_Table], str | None]:
    rows = []
    fig, axes = _figure(2, 4.8, 3.4)
    any_data = False
    for i, (name, r) in enumerate(res.items()):
        mc = r.get("monte_carlo")
        if not mc:
            continue
        any_data = True
        runs = list(mc["runs"]) + ([mc["paired"]] if mc.get("paired") else [])
        for x in runs:
            rows.append([name, x["scale"], mc["n_sampled"], " / ".join(f"{f:.3f}" for f in x["flip_rate"]),
                         x["sid_change_rate"], x["mean_shared_prefix"], x["sid"]["O_emp"],
                         x["sid"]["K_eff_emp"], x["sid"]["O_confusion"],
                         " / ".join(_fmt(lv["K_eff_emp"]) for lv in x["levels"])])
        sc = mc["scales"]
        L = len(mc["runs"][0]["flip_rate"])
        for l in range(L):
            axes[0].plot(sc, [x["flip_rate"][l] for x in mc["runs"]], color=_col(i),
                         marker=_MARK[l % len(_MARK)], ls=_LS[l % len(_LS)], label=f"{name} L{l + 1}")
        axes[1].plot(sc, [x["mean_shared_prefix"] for x in mc["runs"]], "o-", color=_col(i), label=name)
    if not any_data:
        return [], None
    axes[0].set_title("flip rate per level")
    axes[1].set_title("expected shared-prefix length")
    for ax in axes:
        ax.set_xlabel("perturbation scale s (x data RMS)")
        ax.legend(fontsize=7)
    return ([_Table("Monte-Carlo perturbation (re-encode perturbed items)",
                    ["tokenizer", "scale", "items", "flip rate per level", "SID change rate",
                     "shared prefix", "SID O_emp", "SID K_eff_emp", "SID O_confusion",
                     "K_eff_emp per level"], rows)],
            _img(fig, "Monte-Carlo flips"))


def _codeword_plots(res: dict[str, dict]) -> list[str]:
    imgs = []
    for name, r in res.items():
        cm = r.get("codeword_map")
        if not cm:
            continue
        fig, axes = _figure(len(cm), 3.6, 3.3)
        for ax, lv in zip(axes, cm):
            c = np.asarray(lv["count"], dtype=float)
            sc = ax.scatter(lv["x"], lv["y"], c=np.log10(np.maximum(c, 1)), s=10 + 40 * c / max(c.max(), 1) if c.size else 10,
                            cmap="viridis")
            ev = lv["explained_variance"]
            ax.set_title(f"{name}: level {lv['level']} ({100 * (ev[0] + ev[1]):.0f}% var.)", fontsize=9)
            fig.colorbar(sc, ax=ax, label="log10 items")
        imgs.append(_img(fig, f"codeword map {name}"))
    return imgs


def _soft_tables(res: dict[str, dict]) -> list[_Table]:
    rows = [[n, r["soft_matching"]["n_pairs"], r["soft_matching"]["mean_shared_prefix_pairs"],
             r["soft_matching"]["mean_shared_prefix_random"], r["soft_matching"]["auc"]]
            for n, r in res.items() if r.get("soft_matching")]
    if not rows:
        return []
    return [_Table("Behaviour-aware soft matching (shared-prefix length)",
                   ["tokenizer", "co-engaged pairs", "mean shared prefix (pairs)",
                    "mean shared prefix (random)", "AUC (ties 1/2)"], rows)]


def _sem_coll(r: dict) -> dict:
    """Collisions of the semantic SIDs (before the disambiguation token); older
    results without them: the whole-SID collisions when there is no such token."""
    sem = r.get("semantic_collisions")
    if sem is None and r["meta"].get("collision_rule", "none") == "none":
        sem = r["collisions"]
    return sem or {k: None for k in ("n_items", "n_unique", "rate", "share_in_collision",
                                      "largest_group", "n_groups")}


def _collision_tables(res: dict[str, dict]) -> list[_Table]:
    keys = ("n_items", "n_unique", "rate", "share_in_collision", "largest_group", "n_groups")
    rows = []
    for n, r in res.items():
        rows.append([n, "semantic (before the disambiguation token)",
                     *(_sem_coll(r)[k] for k in keys), r["meta"]["collision_rule"]])
        rows.append([n, "final SID", *(r["collisions"][k] for k in keys),
                     r["meta"]["collision_rule"]])
    return [_Table("Collisions: items sharing their semantic SID (headline) and whole final SIDs",
                   ["tokenizer", "SIDs", "items", "unique SIDs", "rate",
                    "share of items in a collision", "largest group", "colliding groups",
                    "collision rule"], rows)]


def _hourglass_tables(res: dict[str, dict]) -> list[_Table]:
    rows = []
    for n, r in res.items():
        for x in r["hourglass"]["levels"]:
            rows.append([n, x["level"], x["norm_entropy"], x["drop_vs_neighbours"], x["gini"],
                         x["std_counts"], x["top1pct_share"], x.get("path_sparsity")])
    return [_Table("Hourglass evidence", ["tokenizer", "level", "H/log2 K", "drop vs neighbours",
                                          "Gini", "std counts", "top-1% share", "path sparsity"], rows)]


def _timing_tables(res: dict[str, dict]) -> list[_Table]:
    keys = sorted({k for r in res.values() for k in r.get("timing_s", {})})
    rows = [[n] + [r.get("timing_s", {}).get(k) for k in keys] for n, r in res.items()]
    return [_Table("Computation time (s)", ["tokenizer"] + keys, rows)]


# --- recommender metrics -----------------------------------------------------------
def _recommender_tables(doc: Mapping[str, Any]) -> tuple[str, list[_Table]]:
    """Mean (± std over seeds) test and validation metrics of a ``metrics.json`` document,
    a row per model."""
    from ..eval.metrics import metric_names

    proto = doc.get("protocol", {})
    summary = doc.get("summary", {})
    summary = {lb: summary[lb] for lb in doc.get("labels", list(summary)) if lb in summary}
    seeds = sorted({s.get("n_seeds") for s in summary.values()} - {None})
    note = (f"Models {', '.join(summary) or '?'}; split {proto.get('split')}, "
            f"{proto.get('ranking')}; seen items masked: {'yes' if proto.get('mask_seen') else 'no'}; "
            f"{proto.get('selection')}. Mean ± std over {'/'.join(map(str, seeds)) or '?'} seed(s).")
    names = metric_names()
    tables = []
    for role in ("test", "valid"):
        rows = [[label] + [f"{s[role][m]['mean']:.4f} ± {s[role][m]['std']:.4f}" if m in s[role] else ""
                           for m in names]
                for label, s in summary.items() if s.get(role)]
        if rows:
            tables.append(_Table(f"{role.capitalize()} metrics", ["model"] + names, rows))
    return note, tables
# --- end recommender metrics -------------------------------------------------------


# ---------------------------------------------------------------- writer
def write_report(results: Mapping[str, Any], out_dir: str | Path, title: str = "sidkit diagnostics",
                 recommender: Mapping[str, Any] | None = None, **diagnose_kwargs: Any) -> dict[str, Path]:
    """Write ``report.html``, ``report.json`` and ``report.md`` into ``out_dir``.

    ``results`` maps a tokenizer name to a :func:`diagnose` result, a ``Codes`` object,
    or a dict of ``diagnose`` inputs (``{"codes": ..., "X": ..., "tokenizer": ...}``);
    extra keyword arguments go to ``diagnose`` for the latter two.  ``recommender``: a
    recommender ``metrics.json`` document, shown in a "Recommendation metrics" section.
    """
    res = _normalise(results, diagnose_kwargs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    fid_t, fid_img = _fidelity(res)
    ov_t, ov_img = _overlap(res)
    mc_t, mc_img = _monte_carlo(res)
    na = {
        "fidelity": "needs embeddings X (and a tokenizer for the tokenizer's own reconstruction)",
        "overlap": "needs codewords: embeddings X or a tokenizer with codebooks_",
        "monte-carlo": "needs embeddings X and a tokenizer to re-encode perturbed items",
        "codewords": "needs codewords: embeddings X or a tokenizer with codebooks_",
        "soft-matching": "needs co-engaged item pairs",
    }
    verdicts = "".join(
        f'<div class="verdict{"" if r["hourglass"]["detected"] else " ok"}"><b>{html.escape(n)}</b>: '
        f'{html.escape(r["hourglass"]["verdict"])}</div>' for n, r in res.items())
    sections: list[tuple[str, str, str, list[_Table], list[str]]] = [
        ("summary", "Summary", "", _summary(res), []),
        ("hourglass", "Hourglass verdict", verdicts, _hourglass_tables(res), []),
        ("usage", "Code usage per level", "Codes sorted by item count (log scale); unused codes at 0.5.",
         _usage_tables(res), [x for x in [_usage_plot(res)] if x]),
        ("lorenz", "Lorenz curves", "The further below the diagonal, the more unequal the usage (Gini = 2 x area).",
         [], [x for x in [_lorenz_plot(res)] if x]),
        ("prefix", "Prefix structure and fan-out", "", _prefix_tables(res), [_fanout_plot(res)]),
        ("fidelity", "Reconstruction fidelity", "", fid_t, [x for x in [fid_img] if x]),
        ("overlap", "Expected codeword overlap and effective capacity",
         "Bhattacharyya model k_jk = exp(-||e_j-e_k||^2/(8 sigma^2)), sigma = s x data RMS; "
         "O = pi^T k pi, K_eff = 1/O. s = 0 gives the inverse Simpson index. "
         "Member model (with embeddings): each member of code j crosses the plane half-way to "
         "codeword k with probability Phi(-margin/sigma); C_jk = mean over j's members, "
         "k_jk = sum_m sqrt(C_jm C_km) (docs/diagnostics.md).",
         ov_t, [x for x in [ov_img] if x]),
        ("monte-carlo", "Monte-Carlo perturbation", "", mc_t, [x for x in [mc_img] if x]),
        ("codewords", "Codeword map (PCA, colour = log usage)", "", [], _codeword_plots(res)),
        ("soft-matching", "Behaviour-aware soft matching", "", _soft_tables(res), []),
        ("collisions", "Collisions", "", _collision_tables(res), []),
        ("timing", "Timing", "", _timing_tables(res), []),
    ]
    if recommender is not None:
        sections.insert(1, ("recommendation", "Recommendation metrics",
                            *_recommender_tables(recommender), []))
    body, md = [], [f"# {title}\n", f"Tokenizers: {', '.join(res)}\n"]
    for sid, head, note, tables, imgs in sections:
        parts = [f'<section id="{sid}"><h2>{html.escape(head)}</h2>']
        md.append(f"## {head}\n")
        if note:
            parts.append(note if sid == "hourglass" else f'<p class="note">{html.escape(note)}</p>')
        if sid == "hourglass":
            md += [f"- **{n}**: {r['hourglass']['verdict']}" for n, r in res.items()] + [""]
        if not tables and not imgs:
            parts.append(f'<p class="na">Not available: {html.escape(na.get(sid, "no data"))}.</p>')
            md.append(f"_Not available: {na.get(sid, 'no data')}._\n")
        parts += [t.html() for t in tables] + imgs
        md += [t.md() for t in tables]
        if imgs:
            md.append(f"_{len(imgs)} plot(s) in report.html._\n")
        parts.append("</section>")
        body.append("".join(parts))
    page = (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<p class=\"note\">Tokenizers: {html.escape(', '.join(res))}. Formulas: docs/diagnostics.md "
            f"in the sidkit repository.</p>" + "".join(body) + "</body></html>")
    paths = {"html": out_dir / "report.html", "json": out_dir / "report.json", "md": out_dir / "report.md"}
    write_text(paths["json"], to_json({"title": title, "tokenizers": res}) + "\n")
    write_text(paths["md"], "\n".join(md))
    write_text(paths["html"], page)
    return paths
