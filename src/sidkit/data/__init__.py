"""The data layer: loaders, containers, processing and splits.

Typical use::

    from sidkit.data import load_dataset, kcore, leave_one_out, item_texts
    ds = load_dataset("ml-100k")                 # fetched once, then cached
    inter = kcore(ds.interactions, user_k=5)
    split = leave_one_out(inter)
    test = split.examples("test", max_len=20)    # user_id, history, target
    texts = item_texts(ds.items.subset(split.items))

Sequence files (P5 / S3-Rec / GRAM: ``USER ITEM ITEM ...`` per line) with a JSON Lines
item table::

    ds = load_dataset("user_sequence.txt.gz", items="items.jsonl.gz")   # or load_sequences
"""

from .amazon import AMAZON_TEMPLATE, load_amazon, read_amazon_meta, read_amazon_reviews
from .containers import Dataset, Interactions, ItemTable, Split
from .fetch import ML100K_SHA256, datasets_dir, extract_ml100k_from_wheel, fetch_ml100k
from .info import dataset_info, format_info, repeated_pairs
from .load import FORMAT_NAMES, detect_format, known_datasets, load_dataset
from .movielens import (MOVIELENS_TEMPLATE, load_grouplens_100k, load_grouplens_dat,
                        load_movielens_csv, load_recbole, load_recbole_items)
from .jsonl import PRODUCT_TEMPLATE, load_item_jsonl, product_template
from .sequences import is_sequence_file, load_sequences, match_items, read_sequences
from .history import truncate_history
from .split import dedup, kcore, leave_one_out, make_split, preprocess, sort_chronologically, temporal_split
from .tabular import load_item_table, load_table
from .text import default_template, item_texts

__all__ = [
    "AMAZON_TEMPLATE", "MOVIELENS_TEMPLATE", "ML100K_SHA256",
    "Dataset", "Interactions", "ItemTable", "Split",
    "load_dataset", "detect_format", "FORMAT_NAMES", "known_datasets", "fetch_ml100k", "datasets_dir",
    "extract_ml100k_from_wheel",
    "load_grouplens_100k", "load_grouplens_dat", "load_movielens_csv", "load_recbole",
    "load_recbole_items", "load_amazon", "read_amazon_reviews", "read_amazon_meta",
    "load_table", "load_item_table",
    "PRODUCT_TEMPLATE", "load_sequences", "read_sequences", "load_item_jsonl", "match_items",
    "product_template", "is_sequence_file",
    "kcore", "dedup", "sort_chronologically", "leave_one_out", "temporal_split", "make_split",
    "preprocess", "truncate_history",
    "dataset_info", "format_info", "repeated_pairs", "item_texts", "default_template",
]
