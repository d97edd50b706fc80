"""End to end on a 300-user slice of Amazon Beauty (../shared/data/amazon-beauty): the
sequence file and JSON Lines item table, the leave-one-out split, a fixed .npy of
embeddings, RQ-KMeans SIDs, and one epoch of every model through `sidkit run`.

Runs in CI (``SIDKIT_REQUIRE_SHARED=1`` in .ci/run turns a missing ../shared into a
failure); skips elsewhere when the folder is absent.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from _require import REQUIRE_SHARED, skip_or_fail

BEAUTY = Path(__file__).resolve().parents[2] / "shared" / "data" / "amazon-beauty"
N_USERS = 300


@pytest.fixture(scope="module")
def beauty_slice(tmp_path_factory):
    if not (BEAUTY / "user_sequence.txt.gz").is_file():
        skip_or_fail(f"{BEAUTY} is not here (the shared Amazon Beauty files)", REQUIRE_SHARED)
    root = tmp_path_factory.mktemp("beauty")
    with gzip.open(BEAUTY / "user_sequence.txt.gz", "rt") as f:
        lines = [next(f) for _ in range(N_USERS)]
    (root / "user_sequence.txt").write_text("".join(lines))
    items = {i for line in lines for i in line.split()[1:]}
    with gzip.open(BEAUTY / "items.jsonl.gz", "rt") as f:
        rows = [r for r in f if json.loads(r)["item_id"] in items]
    (root / "items.jsonl").write_text("".join(rows))
    ids = sorted(items)   # item-table order is the catalogue order checked below
    return root, ids


def test_beauty_slice_end_to_end(beauty_slice, tmp_path):
    from sidkit.config import config_from_dict
    from sidkit.io import read_json
    from sidkit.pipeline import run_pipeline

    root, ids = beauty_slice
    out = tmp_path / "run"
    # the item table's order, as the items stage records it, is the embeddings' row order
    probe = config_from_dict({"data": {"dataset": str(root / "user_sequence.txt"),
                                       "items": str(root / "items.jsonl"), "user_core": 0}})
    run_pipeline(probe, out, stop_before="embeddings")
    order = read_json(out / "items" / "item_ids.json")["item_ids"] if (out / "items" / "item_ids.json").exists() \
        else read_json(out / "items" / "texts.json")["item_ids"]
    assert sorted(order) == ids and len(order) == 2795
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(20, 16))
    X = centers[rng.integers(0, 20, len(order))] + 0.3 * rng.normal(size=(len(order), 16))
    np.save(tmp_path / "emb.npy", X.astype(np.float32))

    one_epoch = {"epochs": 1, "batch_size": 256, "warmup_steps": 0, "eval_batch_size": 512}
    small = {"max_len": 10, "dropout": 0.0}
    cfg = config_from_dict({
        "data": {"dataset": str(root / "user_sequence.txt"), "items": str(root / "items.jsonl"), "user_core": 0},
        "embed": {"embeddings_file": str(tmp_path / "emb.npy")},
        "codes": {"codebook_sizes": [16, 16]},
        "diagnostics": {"perturbation_scales": [0.1], "report": False},
        "train": one_epoch,
        "models": [{"type": "popularity"},
                   {"type": "sasrec", "hidden": 16, "n_blocks": 1, "n_heads": 1, **small},
                   {"type": "causal_sid", "hidden": 16, "n_layers": 1, "n_heads": 1, **small},
                   {"type": "causal_sid", "label": "id_only", "id_only": True, "hidden": 16, "n_layers": 1,
                    "n_heads": 1, **small},
                   {"type": "tiger", "d_model": 16, "n_layers": 1, "n_heads": 2, "d_kv": 8, "d_ff": 32,
                    "max_len": 10, "dropout": 0.0}]})
    res = run_pipeline(cfg, out)
    assert [r.status for r in res.stages][-2:] == ["ran", "ran"]
    data = res.summary("data")
    assert data["users"] == N_USERS and data["items"] == 2795 and data["interactions"] == 4161
    doc = read_json(out / "recommender" / "metrics.json")
    assert doc["labels"] == ["popularity", "sasrec", "causal_sid", "id_only", "tiger"]
    for rec in doc["records"]:
        assert rec["test"]["n_examples"] == rec["valid"]["n_examples"] == N_USERS
        assert 0.0 <= rec["test"]["ndcg@10"] <= 1.0
        if rec["label"] in ("causal_sid", "id_only", "tiger"):
            assert rec["test"]["invalid_rate"] == 0.0 and rec["epochs_run"] == 1
    # popularity reaches the items the slice's training data counts most: above zero here
    pop = next(r for r in doc["records"] if r["label"] == "popularity")
    assert pop["test"]["recall@10"] > 0
