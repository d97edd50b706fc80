"""`sidkit serve` as a hostile catalogue and a hostile client would try it (issue 23).

- The model card page (``/``) with item ids and titles written to break out of its
  script block or to inject markup, rendered by a real headless Chromium: no script from
  the data runs, while the page's own script still answers the example history.
- The page's Content-Security-Policy and the escaping of every value in its script.
- The optional bearer token (``--token`` / ``SIDKIT_SERVE_TOKEN``, constant-time compare),
  the warning for a non-loopback ``--host`` without one, and ``/docs`` (Swagger UI from a
  CDN) off by default.

One tiny run (36 items with hostile ids and titles, random 8-d embeddings from a file:
no text model) built per module, served by one ``sidkit serve`` subprocess on loopback.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from test_serve import Server  # noqa: E402  (the loopback subprocess helper)

# every payload, if it ever ran, sets the document title to "PW" + "NED" (the word
# PWNED never appears in the data itself, so finding it in the page proves execution)
PAYLOADS = [
    "</script><script>document.title='PW'+'NED'</script>",
    "</SCRIPT ><script>document.title='PW'+'NED'</script>",
    "<!--<script>document.title='PW'+'NED'</script>",
    "\"><img/src=x/onerror=document.title='PW'+'NED'>",
    "'];document.title='PW'+'NED';//",
    "\u2028document.title='PW'+'NED'//\u2029",
    "&lt;/script&gt;&amp;",
    "</style><script>document.title='PW'+'NED'</script>",
    "<svg/onload=document.title='PW'+'NED'>",
]
N_ITEMS = 36
IDS = [f"{PAYLOADS[i % len(PAYLOADS)]}#{i}" for i in range(N_ITEMS)]
TITLE = "<img src=x onerror=\"document.title='PW'+'NED'\"></script><script>document.title='PW'+'NED'</script> {i}"
# every user's training sequence ends with these (the page's example history: the end of
# the first user's training sequence), so the page embeds the script-breaking ids
EXAMPLE = [IDS[0], IDS[2], IDS[5], IDS[6], IDS[7]]
TOKEN = "t0k-" + "x" * 28


def _make_hostile_run(tmp: Path) -> Path:
    from sidkit.config import config_from_dict
    from sidkit.pipeline import run_pipeline

    rng = np.random.default_rng(0)
    d = tmp / "toy"
    d.mkdir(parents=True)
    rows = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for u in range(30):
        seq = [IDS[j] for j in rng.integers(N_ITEMS, size=5)] + EXAMPLE + [IDS[j] for j in rng.integers(N_ITEMS, size=2)]
        rows += [f"u{u}\t{item}\t4\t{1000 + 10 * t + u}" for t, item in enumerate(seq)]
    (d / "toy.inter").write_text("\n".join(rows) + "\n")
    items = ["item_id:token\tmovie_title:token_seq"] + [f"{IDS[i]}\t{TITLE.format(i=i)}" for i in range(N_ITEMS)]
    (d / "toy.item").write_text("\n".join(items) + "\n")
    np.save(tmp / "emb.npy", rng.normal(size=(N_ITEMS, 8)).astype(np.float32))
    cfg = config_from_dict({
        "data": {"dataset": str(d), "user_core": 2}, "device": "cpu",
        "embed": {"embeddings_file": str(tmp / "emb.npy")},
        "codes": {"codebook_sizes": [3, 4], "n_levels": 2},
        "diagnostics": {"perturbation_scales": [0.1], "report": False},
        "models": [{"type": "popularity"},
                   {"type": "causal_sid", "hidden": 16, "n_layers": 1, "n_heads": 1, "max_len": 6,
                    "dropout": 0.0, "beam": 5}],
        "train": {"epochs": 1, "batch_size": 32, "warmup_steps": 1}})
    run_pipeline(cfg, tmp / "run")
    return tmp / "run"


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("SIDKIT_HOME", str(tmp_path_factory.mktemp("sidkit-home")))
    try:
        yield _make_hostile_run(tmp_path_factory.mktemp("hostile"))
    finally:
        mp.undo()


@pytest.fixture(scope="module")
def hostile_server(hostile_run, tmp_path_factory):
    srv = Server(hostile_run, tmp_path_factory.mktemp("logs") / "hostile.log", "--text-model", "off")
    try:
        yield srv.wait_ready()
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def served(hostile_run):
    from sidkit.serve.runtime import ServedModel

    return ServedModel(hostile_run, device="cpu")


def _client(served, **kw):
    from fastapi.testclient import TestClient

    from sidkit.serve import create_app

    return TestClient(create_app(served.run_dir, served=served, text_model="off", **kw))


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or \
        ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


# ---------------------------------------------------------------------------- the page
def test_the_example_history_is_the_hostile_one(hostile_server):
    """The run really holds the hostile ids, and the page embeds them (escaped)."""
    r = httpx.post(hostile_server.url + "/recommend", json={"history": EXAMPLE, "k": 5})
    assert r.status_code == 200, r.text
    assert all(it["item_id"] in IDS for it in r.json()["items"])
    # an id holding '/' is addressable (sent as %2F)
    from urllib.parse import quote

    item = httpx.get(hostile_server.url + "/items/" + quote(IDS[0], safe="") + "/sid")
    assert item.status_code == 200 and item.json()["item_id"] == IDS[0], item.text
    html = httpx.get(hostile_server.url + "/").text
    script = re.search(r"<script nonce=\"[^\"]+\">(.*?)</script>", html, re.S).group(1)
    assert "<" not in script and ">" not in script.replace("=>", "") and "&" not in script.replace("&&", "")
    assert "\u2028" not in script and "\u2029" not in script
    for bad in ("</script", "<!--", "<img", "<svg", "</style"):
        assert bad not in html.split("<body>", 1)[1].replace("</script>\n</body>", ""), bad
    line = next(x for x in script.splitlines() if x.startswith("const EXAMPLE = "))
    assert json.loads(line[len("const EXAMPLE = "):-1]) == EXAMPLE       # the same ids for JavaScript


def test_page_sends_a_content_security_policy(hostile_server):
    r = httpx.get(hostile_server.url + "/")
    csp = r.headers["content-security-policy"]
    nonce = re.search(r"script-src 'nonce-([A-Za-z0-9_-]+)'", csp).group(1)
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert re.findall(r"<script( [^>]*)?>", r.text) == [f' nonce="{nonce}"']       # one script, with the nonce
    assert f'<style nonce="{nonce}">' in r.text
    assert httpx.get(hostile_server.url + "/").headers["content-security-policy"] != csp   # a nonce per answer
    assert r.headers["x-content-type-options"] == "nosniff"


def test_hostile_ids_and_titles_run_no_script_in_chromium(hostile_server, tmp_path):
    """Headless Chromium loads the page of a run whose ids and titles are script and
    markup: the page's own script answers the example history (10 rows with the hostile
    ids as text), and none of the data's script runs (the title is never PWNED)."""
    browser = _chromium()
    if browser is None:
        if os.environ.get("SIDKIT_REQUIRE_CHROMIUM", "").strip() == "1":
            pytest.fail("Chromium is not installed and SIDKIT_REQUIRE_CHROMIUM=1")
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-quic",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
           hostile_server.url + "/"]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out = dom.stdout
    assert "PWNED" not in out, "a script from the data ran: " + out[:3000]
    assert "<title>sidkit serve: causal_sid</title>" in out
    rows = re.findall(r'<tr class="rec"><td>\d+</td><td>(.*?)</td>', out)
    assert len(rows) == 10, out[-3000:] + dom.stderr[-2000:]            # the page's own script ran
    import html as _html

    assert {_html.unescape(r) for r in rows} <= set(IDS)
    # the history list: each id with its title and SID, fetched from /items/{id}/sid
    hist = re.search(r'<ol id="hist">(.*?)</ol>', out, re.S).group(1)
    assert hist.count("<li>") == len(EXAMPLE) and hist.count(" [") == len(EXAMPLE), hist
    assert "&lt;img src=x onerror=" in hist                              # the title, as text


# ---------------------------------------------------------------------------- unit: escaping
def test_script_json_escapes_what_could_end_the_script():
    from sidkit.serve.page import script_json

    value = ["</script><script>x()</script>", "<!--", "a&b", "\u2028\u2029", "é", "-->"]
    text = script_json(value)
    assert not set("<>&\u2028\u2029") & set(text)
    assert json.loads(text) == value


def test_render_page_embeds_no_raw_data(served):
    from sidkit.serve.page import render_page

    card = served.card()
    card["protocol"] = {**card["protocol"], "dataset": "</script><script>x()</script>"}
    html = render_page(card, EXAMPLE, "Title: </script>{title}", nonce="n0nce")
    body = html.split("<body>", 1)[1]
    script = body[body.index('<script nonce="n0nce">'):]
    assert script.count("</script>") == 1 and "<!--" not in script and "\u2028" not in script
    assert "&lt;/script&gt;&lt;script&gt;x()&lt;/script&gt;" in body            # HTML context: escaped


# ---------------------------------------------------------------------------- token
def test_bearer_token_guards_every_endpoint_but_the_page_and_health(served, monkeypatch):
    import hmac

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    good = {"Authorization": f"Bearer {TOKEN}"}
    with _client(served, token=TOKEN) as c:
        for method, path, body in (("post", "/recommend", {"history": EXAMPLE[:2]}), ("get", "/metrics", None),
                                   ("get", "/openapi.json", None), ("get", "/sids/0-0-0/item", None),
                                   ("post", "/encode", {"embedding": [0.0] * 8})):
            kw = {"json": body} if body is not None else {}
            r = getattr(c, method)(path, **kw)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["detail"].startswith("this server needs a bearer token")
            for wrong in (f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer", f"Basic {TOKEN}", TOKEN):
                r = getattr(c, method)(path, headers={"Authorization": wrong}, **kw)
                assert r.status_code == 401 and r.json()["detail"].startswith("wrong bearer token"), (wrong, r.text)
            r = getattr(c, method)(path, headers=good, **kw)
            assert r.status_code in (200, 404), (path, r.text)
        r = c.post("/recommend", json={"history": EXAMPLE[:2]}, headers={"authorization": f"bearer {TOKEN}"})
        assert r.status_code == 200
        assert calls and all(a == b == 32 for a, b in calls)       # SHA-256 digests, compared in constant time
        # public: the liveness probe and the page (which asks for the token, and embeds no user history)
        h = c.get("/health")
        assert h.status_code == 200 and h.json()["auth"] is True
        page = c.get("/")
        assert page.status_code == 200 and 'id="token"' in page.text
        assert "const EXAMPLE = [];" in page.text and "document.title" not in page.text
    with _client(served) as c:
        assert c.get("/health").json()["auth"] is False
        assert c.post("/recommend", json={"history": EXAMPLE[:2]}).status_code == 200


@pytest.mark.parametrize("bad", ["", "with space", "tab\there", "nul\x00", "é-non-ascii"])
def test_a_bad_token_is_refused_at_start(served, bad):
    from sidkit.errors import ConfigError
    from sidkit.serve import create_app

    with pytest.raises(ConfigError, match="bearer token must be a non-empty string of printable ASCII"):
        create_app(served.run_dir, served=served, token=bad)


def test_docs_are_off_by_default_and_local_page_has_no_cdn(served):
    with _client(served) as c:
        assert c.get("/docs").status_code == 404 and c.get("/redoc").status_code == 404
        assert c.get("/openapi.json").status_code == 200
        assert re.search(r"https?://", c.get("/").text) is None
    with _client(served, docs=True) as c:                # asked for: FastAPI's page, which loads from a CDN
        assert c.get("/docs").status_code == 200 and "cdn.jsdelivr.net" in c.get("/docs").text


def test_cli_warns_for_a_public_host_without_token(served, monkeypatch):
    """--host 0.0.0.0 without a token warns (the server itself is not started here: the
    run function is replaced, so nothing listens); the env variable is the token."""
    from typer.testing import CliRunner

    import sidkit.serve.server as server_mod
    from sidkit.cli import app
    from sidkit.commands.serve import is_loopback

    started = []
    monkeypatch.setattr(server_mod, "run", lambda a, **kw: started.append((a, kw)))
    monkeypatch.delenv("SIDKIT_SERVE_TOKEN", raising=False)
    run = str(served.run_dir)
    r = CliRunner().invoke(app, ["serve", run, "--host", "0.0.0.0", "--text-model", "off"])
    assert r.exit_code == 0, r.output
    assert "warning: --host 0.0.0.0 is not a loopback address and no token is set" in r.output
    assert started[-1][1]["host"] == "0.0.0.0" and started[-1][0].state.served.n_items == N_ITEMS
    for args, env in ((["--host", "0.0.0.0"], {"SIDKIT_SERVE_TOKEN": TOKEN}), (["--host", "::1"], {}),
                      (["--host", "localhost"], {}), ([], {})):
        r = CliRunner().invoke(app, ["serve", run, "--text-model", "off", *args], env=env)
        assert r.exit_code == 0 and "warning" not in r.output, (args, r.output)
    r = CliRunner().invoke(app, ["serve", run, "--text-model", "off", "--host", "0.0.0.0"],
                           env={"SIDKIT_SERVE_TOKEN": TOKEN})
    assert "bearer token required" in r.output
    assert [is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost", "0.0.0.0", "::",
                                     "10.0.0.1", "example.com")] == [True] * 5 + [False] * 4
