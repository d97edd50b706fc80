"""`POST /items` (issue 25): new items join the served SID model while the server runs,
persist in RUN/catalogue (a restart keeps them), bad input is one 4xx that changes
nothing, and requests during an update see the old or the new catalogue, never a mixture.
In-process (starlette's TestClient, lifespan included)."""

from __future__ import annotations

import threading

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from test_add_items import _emb, _snapshot, base_run  # noqa: F401,E402 (fixture: a tiny trained run)


@pytest.fixture
def run(base_run, tmp_path):  # noqa: F811
    import shutil

    dst = tmp_path / "run"
    shutil.copytree(base_run, dst)
    return dst


def _client(run, **kw):
    from fastapi.testclient import TestClient

    from sidkit.serve import create_app

    return TestClient(create_app(run, device="cpu", text_model="lazy", **kw))


def _all_items(c, history=("i1", "i4"), k=100):
    r = c.post("/recommend", json={"history": list(history), "k": k, "beam": 100})
    assert r.status_code == 200, r.text
    return r.json()["items"]


@pytest.mark.parametrize("items_process", ["preload", "off"])
def test_post_items_makes_them_recommendable_and_survives_a_restart(run, items_process):
    """In the helper process (the default) and in a thread of the server: the same answers,
    and the SIDs the running server gives are the ones a restart rebuilds."""
    with _client(run, items_process=items_process) as c:
        n0 = c.get("/health").json()["n_items"]
        X = _emb(run, 2)
        r = c.post("/items", json={"items": [{"item_id": "new1", "embedding": X[0].tolist()},
                                             {"item_id": "new2", "embedding": X[1].tolist()}]})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["added"] == 2 and body["n_items"] == n0 + 2 and body["version"] == "v-000001"
        sids = {it["item_id"]: it["sid"] for it in body["items"]}
        assert c.get("/health").json()["n_items"] == n0 + 2
        got = {it["item_id"] for it in _all_items(c)}
        assert {"new1", "new2"} <= got                          # in the trie: beam search emits them
        assert c.get("/items/new1/sid").json()["sid"] == sids["new1"]
        assert c.get(f"/sids/{sids['new2']}/item").json()["item_id"] == "new2"
        # a history holding a new item is accepted
        assert c.post("/recommend", json={"history": ["new1"], "k": 3}).status_code == 200
        # text, embedded with the run's text model
        r = c.post("/items", json={"items": [{"item_id": "t1", "text": "Title: A new horror film. Year: 2031. "
                                                                       "Genres: Horror."}]})
        assert r.status_code == 200, r.text
        assert c.get("/items/t1/sid").json()["title"].startswith("Title: A new horror film")
    with _client(run) as c:                                     # a restart
        assert c.get("/health").json()["n_items"] == n0 + 3
        assert c.get("/items/new1/sid").json()["sid"] == sids["new1"]


@pytest.mark.parametrize("items, status, match", [
    ([{"item_id": "n1", "embedding": [0.0] * 3}], 422, "dimensions"),
    ([{"item_id": "i1", "emb": True}], 422, "already in"),
    ([{"item_id": "n1", "emb": True}, {"item_id": "n1", "emb": True}], 422, "twice"),
    ([{"item_id": "n1", "text": ""}], 422, "empty"),
    ([{"item_id": "n1", "text": "   "}], 422, "empty"),
    ([{"item_id": "n\u0000", "emb": True}], 422, "control character U\\+0000"),
    ([{"item_id": "n1", "emb": "nan"}], 422, "NaN|valid number|finite"),
    ([{"item_id": f"n{i}", "emb": True} for i in range(1001)], 422, "at most 1000"),
    ([], 422, "at least 1"),
    ([{"item_id": "n1"}], 422, "exactly one of"),
    ([{"item_id": "n1", "text": "x"}, {"item_id": "n2", "emb": True}], 422, "mixture"),
])
def test_bad_input_is_one_4xx_and_changes_nothing(run, items, status, match):
    import re

    with _client(run) as c:
        dim = c.get("/health").json()["embedding_dim"]
        body = []
        for it in items:
            it = dict(it)
            e = it.pop("emb", None)
            if e is True:
                it["embedding"] = [0.1] * dim
            elif e == "nan":
                it["embedding"] = [float("nan")] + [0.1] * (dim - 1)
            body.append(it)
        snap = _snapshot(run)
        n0 = c.get("/health").json()["n_items"]
        import json as _json

        r = c.post("/items", content=_json.dumps({"items": body}).replace("NaN", "NaN"),
                   headers={"content-type": "application/json"})
        assert r.status_code == status, r.text
        assert re.search(match, r.text), r.text
        assert c.get("/health").json()["n_items"] == n0
        assert _snapshot(run) == snap


def test_id_models_answer_409(run):
    with _client(run, label="popularity") as c:
        r = c.post("/items", json={"items": [{"item_id": "n1", "embedding": [0.1] * 4}]})
        assert r.status_code == 409 and "cannot take new items" in r.json()["detail"]


def test_requests_during_an_update_see_the_old_or_the_new_catalogue(run):
    """A burst of /recommend requests while POST /items runs: every answer lists the whole
    old catalogue or the whole new one (k = beam = 100 > both), and every item's SID is the
    one the final catalogue gives it -- a mixture (indices of one view, ids of the other)
    would show other ids or other SIDs."""
    with _client(run, max_wait_ms=1) as c:
        old = {it["item_id"]: it["sid"] for it in _all_items(c)}
        X = _emb(run, 4, seed=5)                  # (this run's last codebook has no room for many more)
        new_ids = [f"b{i}" for i in range(4)]
        answers, errors = [], []
        stop = threading.Event()

        def burst():
            while not stop.is_set():
                try:
                    answers.append(_all_items(c))
                except AssertionError as e:          # noqa: PERF203
                    errors.append(e)

        threads = [threading.Thread(target=burst) for _ in range(4)]
        for t in threads:
            t.start()
        while len(answers) < 4:                       # the burst is running before the update
            threading.Event().wait(0.005)
        r = c.post("/items", json={"items": [{"item_id": i, "embedding": x.tolist()} for i, x in zip(new_ids, X)]})
        n_at_swap = len(answers)
        for _ in range(500):                          # keep the burst going a little after the swap
            if len(answers) > n_at_swap + 20:
                break
            threading.Event().wait(0.01)
        stop.set()
        for t in threads:
            t.join()
        assert r.status_code == 200, r.text
        assert not errors, errors[:1]
        new = {it["item_id"]: it["sid"] for it in _all_items(c)}
        assert set(new) == set(old) | set(new_ids)
        assert all(new[i] == s for i, s in old.items())            # old items keep their SIDs
        kinds = set()
        for a in answers:
            ids = {it["item_id"] for it in a}
            assert ids in (set(old), set(new)), sorted(ids ^ set(old))[:5]
            assert all(new[it["item_id"]] == it["sid"] for it in a)
            kinds.add(len(ids))
        assert kinds == {len(old), len(new)}                       # answers from both sides of the swap


def test_a_running_server_takes_in_items_that_sidkit_add_items_wrote(run, tmp_path):
    """`sidkit add-items` in another process while the server runs: the server's catalogue
    watcher takes the new version in (no restart), and the server's own next update builds
    on it (versions are cumulative: nothing either wrote is lost)."""
    import json
    import time

    import numpy as np
    from typer.testing import CliRunner

    from sidkit.cli import app

    np.save(tmp_path / "x.npy", _emb(run, 2))
    (tmp_path / "new.jsonl").write_text(json.dumps({"item_id": "cli1"}) + "\n" + json.dumps({"item_id": "cli2"}) + "\n")

    def wait_for(c, n, seconds=30.0):
        t0 = time.time()
        while time.time() - t0 < seconds:
            h = c.get("/health").json()
            if h["n_items"] == n:
                return h
            time.sleep(0.05)
        return c.get("/health").json()

    with _client(run, watch_catalogue=0.05) as c, _client(run, watch_catalogue=0) as still:
        h0 = c.get("/health").json()
        assert h0["catalogue_version"] is None
        res = CliRunner().invoke(app, ["add-items", str(run), str(tmp_path / "new.jsonl"),
                                       "--embeddings", str(tmp_path / "x.npy")])
        assert res.exit_code == 0, res.output
        h = wait_for(c, h0["n_items"] + 2)
        assert h["n_items"] == h0["n_items"] + 2 and h["catalogue_version"] == "v-000001"
        assert {"cli1", "cli2"} <= {it["item_id"] for it in _all_items(c)}     # in the trie
        assert c.get("/items/cli1/sid").status_code == 200
        assert still.get("/health").json()["n_items"] == h0["n_items"]        # watching off: unchanged
        # the server's own update keeps the CLI's items (and a restart sees all three)
        r = c.post("/items", json={"items": [{"item_id": "srv1", "text": "Title: A new horror film. Year: 2031. "
                                                                         "Genres: Horror."}]})
        assert r.status_code == 200 and r.json()["version"] == "v-000002", r.text
        assert r.json()["n_items"] == h0["n_items"] + 3
    with _client(run) as c:
        assert c.get("/health").json()["n_items"] == h0["n_items"] + 3


def test_a_damaged_catalogue_version_keeps_the_served_catalogue(run, caplog):
    """A catalogue the watcher cannot read is logged and the server keeps answering with
    the catalogue it has."""
    import time

    with _client(run, watch_catalogue=0.05) as c:
        n0 = c.get("/health").json()["n_items"]
        (run / "catalogue").mkdir()
        (run / "catalogue" / "CURRENT").write_text("v-000009")       # names a version that is not there
        with caplog.at_level("WARNING", logger="sidkit.serve"):
            t0 = time.time()
            while time.time() - t0 < 10 and "could not take in" not in caplog.text:
                time.sleep(0.05)
        assert "could not take in the run's added items" in caplog.text
        assert c.get("/health").json()["n_items"] == n0
        assert len(_all_items(c)) > 0


def test_refresh_builds_the_same_view_as_a_restart_and_loads_the_tokenizer_only_when_used(run):
    """An update in a running server (``ServedModel.refresh``) extends the titles and SID
    strings of the view it replaces and defers loading the tokenizer to its first use; what
    it serves is what a restart on the same catalogue version serves."""
    import numpy as np

    from sidkit.catalogue import add_items_to_run
    from sidkit.serve.runtime import ServedModel

    served = ServedModel(run, device="cpu")
    n0 = served.n_items
    for step in range(2):
        ids = [f"r{step}a", f"r{step}b"]
        add_items_to_run(run, ids, embeddings=_emb(run, 2, seed=step + 1),
                         texts=[f"Title: new film {step}", "Title: its sequel"] if step == 0 else None)
        assert served.refresh() and not served.refresh()             # a second call: nothing new
        view = served.view
        assert view._encoding is not None                            # not loaded by the update
    fresh = ServedModel(run, device="cpu")
    assert served.n_items == fresh.n_items == n0 + 4
    np.testing.assert_array_equal(served.item_ids, fresh.item_ids)
    np.testing.assert_array_equal(served.sid_strings, fresh.sid_strings)
    assert list(served.titles) == list(fresh.titles)
    assert list(served.titles[-4:-2]) == ["Title: new film 0", "Title: its sequel"]
    X = _emb(run, 3, seed=9)
    np.testing.assert_array_equal(view.tokenizer.encode(X).codes, fresh.tokenizer.encode(X).codes)
    assert view._encoding is None                                    # loaded once, on first use
    np.testing.assert_array_equal(view.run_codes.codes, fresh.run_codes.codes)
