"""ReSID proxy diagnostic on MovieLens-100K: held-out field accuracy of a kNN probe
(sidkit.diagnostics.fields.field_prediction) for text vs FAMAE embeddings.

    python benchmarks/famae_proxy.py RUN_DIR FAMAE_EMBEDDINGS_DIR [k]

RUN_DIR: a default run (its data/items and embeddings/ = the text embeddings);
FAMAE_EMBEDDINGS_DIR: the output of `sidkit embed ml-100k --method famae`.
Prints accuracy per field, mean over 3 hold-out seeds (20% of the items held out).
"""

import json
import sys
from pathlib import Path

import numpy as np

from sidkit.data import ItemTable
from sidkit.diagnostics.fields import field_prediction
from sidkit.types import Embeddings

run, famae_dir = Path(sys.argv[1]), Path(sys.argv[2])
k = int(sys.argv[3]) if len(sys.argv) > 3 else 10
items = ItemTable.load(run / "data")
ids = items.items.astype(str).to_numpy()
text, famae = Embeddings.load(run / "embeddings"), Embeddings.load(famae_dir)
for e in (text, famae):
    assert (e.item_ids == ids).all(), "embeddings are not in item-table order"
d = famae.meta["dims"][0]
names = [f["name"] for f in famae.meta["fields"]]
variants = {"text (all-MiniLM-L6-v2)": text.vectors, "famae (all fields)": famae.vectors,
            "famae (item-id block only)": famae.vectors[:, names.index("item_id") * d:(names.index("item_id") + 1) * d],
            "random (64-d Gaussian)": np.random.default_rng(0).standard_normal((len(ids), 64))}
rows = {}
for name, X in variants.items():
    res = [field_prediction(X, items, k=k, random_state=s) for s in (0, 1, 2)]
    rows[name] = {f: float(np.mean([r["fields"][f]["accuracy"] for r in res])) for f in res[0]["fields"]}
    rows[name]["majority"] = {f: float(np.mean([r["fields"][f]["majority"] for r in res])) for f in res[0]["fields"]}
print(json.dumps(rows, indent=1))
