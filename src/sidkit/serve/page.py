"""The page at ``/``: a model card and a form that asks ``POST /recommend`` (plain JS fetch).

Self-contained: inline CSS and JS, no external resources.  Data reaches the page two ways
only: as HTML-escaped text (:func:`html.escape`) and, inside the one ``<script>``
block, as JSON written by :func:`script_json` (``<``, ``>``, ``&``, U+2028 and U+2029
escaped, so no value can close the script or open a comment or tag).  The script and
style carry a per-response nonce that the page's Content-Security-Policy names
(:func:`sidkit.serve.app.content_security_policy`): no other script runs even if markup
got in.  Results are put in the page with ``textContent`` only.
"""

from __future__ import annotations

import html
import json
from typing import Any

_METRICS = ("recall@10", "ndcg@10", "mrr@20", "coverage@10", "invalid_rate")


def _e(v: Any) -> str:
    return html.escape(str(v))


_SCRIPT_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def script_json(value: Any) -> str:
    """``value`` as a JSON literal safe inside an HTML ``<script>`` block: ``<``, ``>``,
    ``&``, U+2028 and U+2029 become ``\\uXXXX`` escapes (the same value for JavaScript, but
    no ``</script>``, ``<!--`` or line terminator in the HTML source)."""
    text = json.dumps(value, ensure_ascii=False)
    for ch, esc in _SCRIPT_ESCAPES.items():
        text = text.replace(ch, esc)
    return text


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v)
    return str(v)


def _rows(pairs) -> str:
    return "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in pairs if v not in (None, "", {}))


def _sid_headline(codes: dict, diag: dict) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    if codes:
        out += [("tokenizer", codes.get("method")), ("codebook sizes", codes.get("codebook_sizes")),
                ("collision rule", codes.get("collision_rule"))]
        sem = codes.get("semantic_collisions") or codes.get("collisions") or {}
        if sem:
            out += [("semantic collision rate", sem.get("rate")),
                    ("items sharing their semantic SID", f"{sem.get('share_in_collision', 0):.1%}"),
                    ("distinct semantic SIDs", sem.get("n_unique")), ("largest group", sem.get("largest_group"))]
        fin = codes.get("collisions") or {}
        if codes.get("semantic_collisions") and fin:
            out.append(("final SID collision rate", fin.get("rate")))
    if diag:
        if diag.get("sid_k_eff"):
            scales = diag.get("overlap_scales") or []
            out.append(("K_eff of the whole SID", ", ".join(f"s={s:g}: {v:,.0f}" for s, v in
                                                            zip(scales, diag["sid_k_eff"]))))
        if diag.get("rel_mse") is not None:
            out.append(("relative reconstruction MSE", diag["rel_mse"]))
        if (diag.get("hourglass") or {}).get("verdict"):
            out.append(("hourglass", diag["hourglass"]["verdict"]))
    return out


def _metrics_table(card: dict) -> str:
    summary, labels = card["summary"], card["labels"]
    head = "".join(f"<th>{_e(m)}</th>" for m in _METRICS)
    body = []
    for lb in labels:
        test = (summary.get(lb) or {}).get("test") or {}
        cells = "".join(f"<td>{_e(_fmt(test[m]['mean']))}" + (f" ± {test[m]['std']:.4f}" if test[m].get("std") else "")
                        + "</td>" if m in test else "<td>—</td>" for m in _METRICS)
        cls = ' class="served"' if lb == card["label"] else ""
        body.append(f"<tr{cls}><th>{_e(lb)}</th><td>{_e((summary.get(lb) or {}).get('n_seeds', ''))}</td>{cells}</tr>")
    return (f"<table class='metrics'><tr><th>model</th><th>seeds</th>{head}</tr>{''.join(body)}</table>")


def _what(card: dict[str, Any]) -> str:
    if card.get("generative", True):
        return "Generative recommendation over Semantic IDs"
    return f"Recommendation by {card.get('type')} (it scores every catalogue item; beam is not used)"


def render_page(card: dict[str, Any], example: list[str], template: str | None, *, nonce: str = "",
                auth: bool = False) -> str:
    """The HTML of the page.  ``example``: a history to prefill and answer on load (empty:
    none); ``nonce``: the CSP nonce of the script and style; ``auth``: the server needs a
    bearer token (the page then asks for it and sends it with every request)."""
    proto, data = card["protocol"], card["data"]
    dataset = proto.get("dataset") or data.get("name") or "?"
    data_rows = _rows([("data set", dataset), ("users", data.get("users") or proto.get("n_users")),
                       ("items", data.get("items") or proto.get("n_items")), ("interactions", data.get("interactions")),
                       ("split", proto.get("split")), ("ranking", proto.get("ranking")),
                       ("seen items masked", {True: "yes", False: "no"}.get(proto.get("mask_seen")))])
    sid_rows = _rows(_sid_headline(card["codes"], card["diagnostics"]))
    rec = card["record"]
    served_rows = _rows([("model", f"{card['label']} ({card['type']}), seed {card['seed']}"),
                         ("device", card["device"]), ("catalogue", f"{card['n_items']:,} items"),
                         ("best epoch", rec.get("best_epoch")), ("epochs run", rec.get("epochs_run")),
                         ("train seconds", f"{rec['train_seconds']:.1f}" if rec.get("train_seconds") else None),
                         ("item text template", template)])
    skip = {"codes"}
    settings = _rows([(k, v) for k, v in sorted(card["model"].items()) if k not in skip and v is not None] +
                     [(f"train.{k}", v) for k, v in sorted(card["train"].items()) if v is not None])
    nattr = f' nonce="{_e(nonce)}"' if nonce else ""
    token_field = ('<label>Bearer token: <input type="password" id="token" autocomplete="off"></label><br>'
                   if auth else "")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>sidkit serve: {_e(card['label'])}</title>
<style{nattr}>
body {{ font-family: system-ui, sans-serif; margin: 1.5rem auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.5rem; }} h2 {{ font-size: 1.15rem; margin-top: 1.6rem; border-bottom: 1px solid #ddd; }}
table {{ border-collapse: collapse; margin: .4rem 0; }}
th, td {{ text-align: left; padding: .2rem .7rem .2rem 0; vertical-align: top; font-size: .92rem; }}
table.metrics td, table.metrics th {{ border-bottom: 1px solid #eee; padding-right: 1rem; }}
tr.served {{ background: #eef6ff; font-weight: 600; }}
.cols {{ display: flex; gap: 2.5rem; flex-wrap: wrap; }}
#form input[type=text] {{ width: 32rem; }} #form input[type=number] {{ width: 4rem; }}
#error {{ color: #b00; white-space: pre-wrap; }} code {{ background: #f4f4f4; padding: 0 .2rem; }}
</style></head><body>
<h1>sidkit serve &mdash; {_e(card['label'])} on {_e(dataset)}</h1>
<p>{_e(_what(card))}. API: <code>POST /recommend</code>, <code>POST /encode</code>,
<code>GET /items/{{id}}/sid</code>, <code>GET /sids/{{sid}}/item</code>, <code>GET /health</code>,
<code>GET /metrics</code>; schema at <code>/openapi.json</code>.</p>
<h2>Try a history</h2>
<form id="form">
{token_field}<label>Item ids, oldest first: <input type="text" id="history" name="history"></label>
<label>k <input type="number" id="k" value="10" min="1" max="100"></label>
<label>beam <input type="number" id="beam" value="20" min="1" max="100"></label>
<label><input type="checkbox" id="mask_seen"{" checked" if card.get("mask_seen_default") else ""}> leave out the history's items</label>
<button type="submit">Recommend</button>
</form>
<div id="error"></div>
<div class="cols"><div><h3>History</h3><ol id="hist"></ol></div>
<div><h3>Recommendations</h3><table id="recs"><thead><tr><th>#</th><th>item</th><th>title</th><th>SID</th>
<th>score</th></tr></thead><tbody></tbody></table></div></div>
<h2>Model card</h2>
<div class="cols">
<div><h3>Data</h3><table>{data_rows}</table></div>
<div><h3>Semantic IDs</h3><table>{sid_rows}</table></div>
<div><h3>Served model</h3><table>{served_rows}</table></div>
</div>
<h3>Test metrics ({_e(proto.get('split', ''))}, mean ± std over seeds)</h3>
{_metrics_table(card)}
<h3>Training settings</h3><table>{settings}</table>
<script{nattr}>
const EXAMPLE = {script_json(list(example))};
const form = document.getElementById("form");
const hist = document.getElementById("history");
hist.value = EXAMPLE.join(", ");
function headers(extra) {{
  const h = Object.assign({{}}, extra || {{}});
  const t = document.getElementById("token");
  if (t && t.value) h["Authorization"] = "Bearer " + t.value;
  return h;
}}
function cell(tr, text) {{ const td = document.createElement("td"); td.textContent = text; tr.appendChild(td); }}
async function showHistory(ids) {{
  const ol = document.getElementById("hist"); ol.innerHTML = "";
  for (const id of ids) {{
    const li = document.createElement("li"); li.textContent = id; ol.appendChild(li);
    fetch("/items/" + encodeURIComponent(id) + "/sid", {{headers: headers()}}).then(r => r.ok ? r.json() : null)
      .then(d => {{ if (d) li.textContent = id + " \\u2014 " + (d.title || "") + " [" + d.sid + "]"; }});
  }}
}}
async function run(ev, given) {{
  if (ev) ev.preventDefault();
  const ids = given || hist.value.split(/[\\s,]+/).filter(s => s.length);
  const err = document.getElementById("error"); err.textContent = "";
  const body = {{history: ids, k: Number(document.getElementById("k").value),
                 beam: Number(document.getElementById("beam").value),
                 mask_seen: document.getElementById("mask_seen").checked}};
  showHistory(ids);
  const tbody = document.querySelector("#recs tbody"); tbody.innerHTML = "";
  const r = await fetch("/recommend", {{method: "POST", headers: headers({{"Content-Type": "application/json"}}),
                                       body: JSON.stringify(body)}});
  const d = await r.json();
  if (!r.ok) {{ err.textContent = r.status + ": " + d.detail; return; }}
  d.items.forEach((it, i) => {{
    const tr = document.createElement("tr"); tr.className = "rec";
    cell(tr, i + 1); cell(tr, it.item_id); cell(tr, it.title || ""); cell(tr, it.sid || "");
    cell(tr, it.score.toFixed(3));
    tbody.appendChild(tr);
  }});
}}
form.addEventListener("submit", run);
if (EXAMPLE.length) run(null, EXAMPLE);
</script>
</body></html>
"""
