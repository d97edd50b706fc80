"""FAMAE item embeddings (SPEC 3) and the held-out field probe."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from sidkit.config import config_from_dict
from sidkit.data import ItemTable, Split
from sidkit.embed.famae import (FAMAE, _build_module, build_field_tables, default_fields,
                                draw_mask, famae_from_config)
from sidkit.errors import ConfigError

FIX = Path(__file__).parent / "fixtures" / "data"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one torch thread is faster, and much faster on a loaded machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def five_items() -> pd.DataFrame:
    return pd.DataFrame({"item_id": ["a", "b", "c", "d", "e"],
                         "title": ["A", "B", "C", "D", "E"],
                         "genres": [["Drama", "Comedy"], ["Drama"], [], ["Action"], None],
                         "year": pd.array([1994, 1995, 1999, None, 1987], dtype="Int64")})


def test_field_tables_exact_on_five_items():
    specs = default_fields(five_items())
    assert [(s.name, s.kind) for s in specs] == [("item_id", "categorical"), ("genres", "multi"), ("year", "bucket")]
    t = build_field_tables(five_items(), specs)
    assert t.vocabs == [["a", "b", "c", "d", "e"], ["Action", "Comedy", "Drama"],
                        ["1985-1989", "1990-1994", "1995-1999"]]
    np.testing.assert_array_equal(t.codes[0], [[1], [2], [3], [4], [5]])
    # genres: sorted values, 0 = missing, -1 = empty slot
    np.testing.assert_array_equal(t.codes[1], [[2, 3], [3, -1], [0, -1], [1, -1], [0, -1]])
    np.testing.assert_array_equal(t.codes[2], [[2], [3], [3], [0], [1]])
    # 10-year buckets, and a subset of fields in the order given
    t10 = build_field_tables(five_items(), default_fields(five_items(), year_bucket=10, names=["year", "genres"]))
    assert t10.names == ["year", "genres"]
    assert t10.vocabs[0] == ["1980-1989", "1990-1999"]
    np.testing.assert_array_equal(t10.codes[0], [[2], [2], [2], [0], [1]])


def test_amazon_default_fields():
    df = pd.DataFrame({"item_id": ["x", "y"], "title": ["t", "u"], "brand": ["B", None],
                       "cat1": ["Beauty", "Beauty"], "cat2": ["Hair", "Skin"], "cat3": [None, "Face"]})
    specs = default_fields(df)
    assert [s.name for s in specs] == ["item_id", "brand", "cat1", "cat2", "cat3"]
    t = build_field_tables(df, specs)
    np.testing.assert_array_equal(np.hstack(t.codes), [[1, 1, 1, 1, 0], [2, 0, 1, 2, 1]])


def test_mask_draws_k_in_1_to_J_uniformly():
    g = torch.Generator().manual_seed(0)
    m = draw_mask(12000, 4, g)
    k = m.sum(1).numpy()
    assert k.min() == 1 and k.max() == 4
    np.testing.assert_allclose(np.bincount(k, minlength=5)[1:] / len(k), 0.25, atol=0.02)
    np.testing.assert_allclose(m.float().mean(0).numpy(), 2.5 / 4, atol=0.02)  # no field favoured


def test_windows_pad_left_only_and_padding_is_never_a_field_value():
    seq = np.array([1, 2, 3, 4, 5, 6])  # one user of 4 items then one of 2
    start = np.array([0, 0, 0, 0, 4, 4])
    m = FAMAE(max_len=3)
    w = m._windows(torch.as_tensor(seq), torch.as_tensor(start), torch.tensor([1, 3, 5]))
    np.testing.assert_array_equal(w.numpy(), [[0, 1, 2], [2, 3, 4], [0, 5, 6]])
    # the masked target is the last column: always a real item
    assert (w[:, -1] > 0).all()
    t = build_field_tables(five_items(), default_fields(five_items()))
    mod = _build_module(t, 8, 1, 2, 16, 0.0, 3)
    f = mod.field_vectors(torch.tensor([[0, 1]]))
    assert torch.count_nonzero(f[0, 0]) == 0 and torch.count_nonzero(f[0, 1]) > 0
    # masking changes the output only through the last position's fields
    mod.eval()
    items = torch.tensor([[0, 1, 2]])
    h_none = mod(items, torch.zeros(1, 3, dtype=torch.bool))
    h_all = mod(items, torch.ones(1, 3, dtype=torch.bool))
    items_other = torch.tensor([[0, 1, 4]])  # another target, every field masked: same output
    assert not torch.allclose(h_none, h_all)
    torch.testing.assert_close(h_all, mod(items_other, torch.ones(1, 3, dtype=torch.bool)))


def synthetic(n_users=40, n_items=12, length=14, seed=0):
    """Two groups of items (genre and era by group); each user stays in one group."""
    rng = np.random.default_rng(seed)
    grp = np.arange(n_items) % 2
    items = pd.DataFrame({"item_id": [f"i{i}" for i in range(n_items)],
                          "genres": [["Drama"] if g == 0 else ["Action", "Sci-Fi"] for g in grp],
                          "year": [1950 + 3 * (i % 3) if g == 0 else 1990 + 3 * (i % 3) for i, g in enumerate(grp)]})
    rows = []
    for u in range(n_users):
        pool = np.flatnonzero(grp == u % 2)
        for p, it in enumerate(rng.choice(pool, length)):
            role = "train" if p < length - 2 else ("valid" if p == length - 2 else "test")
            rows.append((f"u{u}", f"i{it}", p, p, role))
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "position", "role"])
    return items, Split(df), grp


SMALL = dict(dim=32, n_heads=2, ffn=64, max_len=8, dropout=0.0, epochs=10, patience=10,
             samples_per_epoch=None, batch_size=64, lr=5e-3, warmup_steps=5, n_negatives=8,
             full_softmax_max=4, device="cpu", show_progress=False)


@pytest.fixture(scope="module")
def fitted():
    items, split, grp = synthetic()
    return FAMAE(**SMALL).fit(items, split), items, split, grp


def test_training_learns_fields_and_groups(fitted):
    m, items, split, grp = fitted
    first, best = m.history_[0], m.best_valid_
    assert m.history_[-1]["loss"] < first["loss"]
    # chance level with every value equally likely: ln V per field
    chance = {"item_id": math.log(12), "genres": math.log(3), "year": math.log(6)}
    for f, c in chance.items():
        assert best["field_loss"][f] < c - (0.3 if f == "item_id" else 0.5), (f, best["field_loss"][f], c)
    # genres follow from the group (the era bucket needs the item itself)
    assert best["field_accuracy"]["genres"] > 0.9
    # the item-id vectors alone (no shared field values) place items of a group together
    ids = m.item_vectors()[:, :32]
    ids = ids / np.linalg.norm(ids, axis=1, keepdims=True)
    sim = ids @ ids.T
    same = grp[:, None] == grp[None, :]
    off = ~np.eye(len(grp), dtype=bool)
    assert sim[same & off].mean() > sim[~same].mean() + 0.2
    emb = m.embeddings()
    assert emb.source == "famae" and emb.vectors.shape == (12, 96)
    assert list(emb.item_ids) == list(items["item_id"])
    assert emb.meta["epochs"] == len(m.history_) and len(emb.meta["losses"]) == len(m.history_)
    assert [f["name"] for f in emb.meta["fields"]] == ["item_id", "genres", "year"]
    np.testing.assert_allclose(np.linalg.norm(emb.vectors.reshape(12, 3, 32), axis=-1), 1, rtol=1e-5)


def test_deterministic_per_seed():
    items, split, _ = synthetic(n_users=10, length=8)
    kw = {**SMALL, "epochs": 2}
    a = FAMAE(**kw, random_state=3).fit(items, split).item_vectors()
    b = FAMAE(**kw, random_state=3).fit(items, split).item_vectors()
    c = FAMAE(**kw, random_state=4).fit(items, split).item_vectors()
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_embeddings_stage_uses_training_interactions_only(tmp_path):
    from sidkit.pipeline import _famae_stage, build_stages

    items, split, _ = synthetic(n_users=10, length=8)
    famae = {k: v for k, v in SMALL.items() if k not in ("device", "show_progress")}
    cfg = config_from_dict({"device": "cpu", "embed": {"method": "famae", "famae": {**famae, "epochs": 2}}})
    stage = next(s for s in build_stages(cfg) if s.name == "embeddings")
    assert set(stage.inputs) == {"items", "split"}
    ItemTable(items).save(tmp_path / "items")
    out = []
    for variant in range(2):
        df = split.df.copy()
        if variant:  # every test (and valid) interaction moved to another item
            held = df["role"] != "train"
            df.loc[held, "item_id"] = "i0"
        Split(df).save(tmp_path / f"split{variant}")
        stage.fn(tmp_path / f"out{variant}", {"items": tmp_path / "items", "split": tmp_path / f"split{variant}"})
        out.append(np.load(tmp_path / f"out{variant}" / "embeddings.npy"))
    np.testing.assert_array_equal(out[0], out[1])
    # ... while the training interactions do change them
    df = split.df.copy()
    df.loc[(df["role"] == "train") & (df["position"] == 1), "item_id"] = "i0"
    Split(df).save(tmp_path / "split2")
    _famae_stage(cfg).fn(tmp_path / "out2", {"items": tmp_path / "items", "split": tmp_path / "split2"})
    assert not np.array_equal(out[0], np.load(tmp_path / "out2" / "embeddings.npy"))
    # the text path keeps its inputs and parameters
    text = next(s for s in build_stages(config_from_dict({})) if s.name == "embeddings")
    assert text.inputs == ("items",) and "famae" not in text.params


@pytest.mark.parametrize("embed, key", [
    ({"method": "famae", "famae": {"dim": 0}}, "embed.famae.dim"),
    ({"famae": {"bogus": 1}}, "embed.famae.bogus"),
    ({"method": "bert"}, "embed.method"),
    ({"famae": {"dropout": 1.5}}, "embed.famae.dropout"),
    ({"famae": {"samples_per_epoch": 0}}, "embed.famae.samples_per_epoch"),
    ({"famae": {"dim": 10, "n_heads": 4}}, "embed.famae"),
    ({"method": "famae", "embeddings_file": "x.npy"}, "embed"),
])
def test_bad_config_names_the_key(embed, key):
    with pytest.raises(ConfigError) as e:
        config_from_dict({"embed": embed})
    assert f"'{key}'" in str(e.value) or f"unknown key '{key}'" in str(e.value)


def test_bad_params_and_fields_raise_config_errors():
    items, split, _ = synthetic(n_users=4, length=5)
    with pytest.raises(ConfigError, match="max_len"):
        FAMAE(max_len=1).fit(items, split)
    with pytest.raises(ConfigError, match="n_heads"):
        FAMAE(dim=10, n_heads=4).fit(items, split)
    with pytest.raises(ConfigError, match="'colour'"):
        FAMAE(fields=["item_id", "colour"]).fit(items, split)
    cfg = config_from_dict({"embed": {"famae": {"dim": 16, "n_heads": 2}}}).embed.famae
    m = famae_from_config(cfg, seed=5)
    assert m.dim == 16 and m.random_state == 5


def test_field_prediction_exact_on_hand_made_case():
    from sidkit.diagnostics.fields import field_prediction

    df = pd.DataFrame({"item_id": list("abcde"),
                       "genres": [["Drama"], ["Drama", "Comedy"], ["Action"], ["Comedy"], ["Action"]],
                       "year": [1990, 1991, 1960, 1992, 1961]})
    X = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.05], [0.1, 1.0]])
    # k = 1: d's nearest reference is a (Drama, 1990-1994): genre wrong, year right;
    # e's is c (Action, 1960-1964): both right
    r = field_prediction(X, df, k=1, test_items=[3, 4])
    # majority genre among a, b, c is Drama: wrong for d (Comedy) and e (Action)
    assert r["fields"]["genres"] == {"accuracy": 0.5, "majority": 0.0, "n_test": 2}
    assert r["fields"]["year"]["accuracy"] == 1.0
    # majority year bucket among a, b, c is 1990-1994: right for d only
    assert r["fields"]["year"]["majority"] == 0.5
    assert r["mean_accuracy"] == 0.75 and r["mean_majority"] == 0.25 and r["n_test"] == 2
    # k = 3: every reference votes; Drama 2, Comedy 1, Action 1 -> Drama for both
    r3 = field_prediction(X, df, k=3, test_items=[3, 4])
    assert r3["fields"]["genres"]["accuracy"] == 0.0 and r3["k"] == 3


def test_last_query_layer_matches_the_full_layer():
    from sidkit.embed.famae import _last_query

    t = build_field_tables(five_items(), default_fields(five_items()))
    mod = _build_module(t, 8, 2, 2, 16, 0.0, 4).eval()
    x = torch.randn(3, 4, 8)
    pad = torch.tensor([[True, False, False, False], [False] * 4, [True, True, False, False]])
    layer = mod.encoder.layers[-1]
    torch.testing.assert_close(_last_query(layer, x, pad), layer(x, src_key_padding_mask=pad)[:, -1])


def test_cli_embed_famae(tmp_path):
    from typer.testing import CliRunner

    from sidkit.cli import app
    from sidkit.types import Embeddings

    runner = CliRunner()
    args = ["embed", str(FIX / "grouplens100k"), "--method", "famae", "--user-core", "0",
            "-p", "epochs=2", "-p", "dim=16", "-p", "n_heads=2", "-p", "ffn=32", "--device", "cpu"]
    res = runner.invoke(app, args + ["--out", str(tmp_path / "e")])
    assert res.exit_code == 0, res.output
    emb = Embeddings.load(tmp_path / "e")
    assert emb.source == "famae" and emb.vectors.shape == (5, 48) and emb.meta["epochs"] == 2
    bad = runner.invoke(app, args + ["-p", "bogus=1", "--out", str(tmp_path / "bad")])
    assert bad.exit_code != 0 and "embed.famae.bogus" in bad.output and not (tmp_path / "bad").exists()


def test_field_losses_exact_full_and_sampled():
    from sidkit.embed.famae import field_losses

    df = pd.DataFrame({"item_id": list("abcd"), "genres": [["x", "y"], ["y"], ["z"], ["x"]]})
    t = build_field_tables(df, default_fields(df, names=["item_id", "genres"]))
    mod = _build_module(t, 4, 1, 2, 8, 0.0, 2)
    h = torch.randn(2, 4)
    targets = [torch.tensor([[1], [3]]), torch.tensor([[1, 2], [3, -1]])]   # items a, c; genres {x,y}, {z}
    mask = torch.tensor([[True, True], [False, True]])

    def cos(u, E):
        return 2.0 * torch.nn.functional.normalize(u, dim=-1) @ torch.nn.functional.normalize(E, dim=-1).T

    # full softmax over both tables (sqrt(4) = 2)
    parts = field_losses(mod, h, targets, mask, n_negatives=3, full_max=10)
    lp_i = cos(h, mod.tables[0].weight[1:]).log_softmax(-1)
    lp_g = cos(h, mod.tables[1].weight[1:]).log_softmax(-1)
    torch.testing.assert_close(parts[0][0], -lp_i[0, 0])                    # only row 0 masks item_id
    torch.testing.assert_close(parts[1][0], -(lp_g[0, 0] + lp_g[0, 1]) / 2 - lp_g[1, 2])
    assert [p[1] for p in parts] == [1, 2]
    # sampled softmax for the item table (4 > full_max = 3): the positive + 5 uniform
    # negatives drawn from the generator, accidental hits (= the positive) removed
    g = torch.Generator().manual_seed(7)
    parts = field_losses(mod, h, targets, mask, n_negatives=5, full_max=3, generator=g)
    neg = torch.randint(0, 4, (5,), generator=torch.Generator().manual_seed(7))
    logits = cos(h[:1], mod.tables[0].weight[1:])[0]
    neg = neg[neg != 0]
    expect = torch.logsumexp(torch.cat([logits[:1], logits[neg]]), 0) - logits[0]
    torch.testing.assert_close(parts[0][0], expect)
