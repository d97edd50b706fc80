"""Request and response models of the serving API (pydantic, unknown keys rejected).

The bounds here are the API's contract and appear in the OpenAPI schema: a history of
1..``MAX_HISTORY`` item ids, ``1 <= k <= MAX_K``, ``1 <= beam <= MAX_BEAM`` and
``beam >= k``.  Item ids are strings; JSON integers are accepted too (MovieLens ids
are numbers) and read as their decimal string.  An id (or user id) holding a control
character (Unicode category Cc: U+0000-U+001F, U+007F-U+009F) is refused with a 422
that names the character and its position: ids are matched exactly, and no catalogue id
holds one.
"""

from __future__ import annotations

from typing import Annotated, Optional, Union

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr, model_validator

from ..utils import control_char

MAX_HISTORY = 1000
MAX_K = 100
MAX_BEAM = 100
MAX_TEXT = 10_000
MAX_DIM = 8192



def control_character(text: str) -> str | None:
    """``None`` when ``text`` holds no control character, else what is wrong with it
    (the first one, written as U+XXXX, and its 0-based position)."""
    bad = control_char(text)
    if bad is None:
        return None
    i, ch = bad
    return (f"holds the control character U+{ord(ch):04X} at position {i}; ids are matched "
            "exactly and never hold control characters (U+0000-U+001F, U+007F-U+009F)")


def _no_control(v):
    if isinstance(v, str):
        bad = control_character(v)
        if bad:
            raise ValueError(f"the id {bad}")
    return v


ItemId = Annotated[Union[StrictStr, StrictInt], AfterValidator(_no_control)]


def _strict(example: dict) -> ConfigDict:
    return ConfigDict(extra="forbid", json_schema_extra={"examples": [example]})


class RecommendRequest(BaseModel):
    model_config = _strict({"history": ["50", "181", "258"], "k": 10, "beam": 20})

    history: list[ItemId] = Field(
        ..., min_length=1, max_length=MAX_HISTORY,
        description="Item ids the user interacted with, oldest first (the model reads the most recent ones).")
    k: int = Field(10, ge=1, le=MAX_K, description="Number of items to return.")
    beam: int = Field(20, ge=1, le=MAX_BEAM, description="Beam width of the trie-constrained beam search (>= k).")
    user: Optional[Annotated[StrictStr, AfterValidator(_no_control)]] = Field(
        None, max_length=200, description="User id (only models with user tokens, e.g. TIGER, use it).")
    mask_seen: Optional[bool] = Field(
        None, description="Leave the history's items out of the answer (true) or not (false); the list is "
                          "still filled with other items. Default (null): the served model's evaluation "
                          "setting (train.mask_seen of the run; GET /health's mask_seen_default).")

    @model_validator(mode="after")
    def _beam_covers_k(self):
        if self.beam < self.k:
            raise ValueError(f"beam ({self.beam}) must be >= k ({self.k}): beam search returns at most "
                             f"beam items; raise beam to {self.k} or lower k")
        return self

    def item_ids(self) -> list[str]:
        return [str(i) for i in self.history]


class RecommendedItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: str
    score: float = Field(..., description="The model's score, higher is better: for SID models the summed "
                                          "log-probability of the item's SID tokens, for SASRec its logit, "
                                          "for popularity the item's number of training interactions.")
    sid: Optional[str] = Field(..., description="The item's Semantic ID, tokens joined by '-' (null when "
                                                "the run has no SIDs).")
    title: Optional[str] = None


class RecommendResponse(BaseModel):
    model_config = _strict({"model": "causal_sid", "seed": 0, "k": 2, "beam": 20, "mask_seen": False, "items": [
        {"item_id": "100", "score": -2.31, "sid": "12-3-7-0", "title": "Fargo"},
        {"item_id": "181", "score": -2.87, "sid": "4-9-1-0", "title": "Return of the Jedi"}]})

    model: str
    seed: int
    k: int
    beam: int = Field(..., description="The beam width asked for (models that score every item, SASRec and "
                                       "popularity, do not use it).")
    mask_seen: bool = Field(..., description="Whether the history's items were left out.")
    items: list[RecommendedItem]


class EncodeRequest(BaseModel):
    model_config = _strict({"text": "Title: Brand New Movie. Year: 2026. Genres: Comedy, Drama."})

    text: Optional[StrictStr] = Field(
        None, min_length=1, max_length=MAX_TEXT,
        description="The item's text, written like the run's item texts (see GET /health's text_template); "
                    "embedded with the run's text model.")
    embedding: Optional[list[float]] = Field(
        None, min_length=1, max_length=MAX_DIM,
        description="The item's embedding vector (the run's embedding dimension), instead of text.")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.text is None) == (self.embedding is None):
            raise ValueError("give exactly one of 'text' or 'embedding'")
        return self


#: most items one POST /items may add (documented in docs/serving.md)
MAX_NEW_ITEMS = 1000


class NewItem(BaseModel):
    model_config = _strict({"item_id": "new-1", "text": "Title: Brand New Movie. Year: 2026. Genres: Comedy."})

    item_id: Annotated[Union[StrictStr, StrictInt], AfterValidator(_no_control)] = Field(
        ..., description="The new item's id (not in the catalogue yet; no control characters).")
    text: Optional[StrictStr] = Field(
        None, max_length=MAX_TEXT, description="The item's text (embedded with the run's text model).")
    embedding: Optional[list[float]] = Field(
        None, min_length=1, max_length=MAX_DIM, description="The item's embedding, instead of text.")

    @model_validator(mode="after")
    def _one_of(self):
        if (self.text is None) == (self.embedding is None):
            raise ValueError("give exactly one of 'text' or 'embedding'")
        return self


class AddItemsRequest(BaseModel):
    model_config = _strict({"items": [{"item_id": "new-1",
                                       "text": "Title: Brand New Movie. Year: 2026. Genres: Comedy."}]})

    items: list[NewItem] = Field(..., min_length=1, max_length=MAX_NEW_ITEMS,
                                 description=f"1..{MAX_NEW_ITEMS} new items, all with text or all with embeddings.")

    @model_validator(mode="after")
    def _same_kind(self):
        kinds = {it.text is None for it in self.items}
        if len(kinds) > 1:
            raise ValueError("give every item a 'text', or every item an 'embedding', not a mixture")
        return self


class AddedItem(BaseModel):
    model_config = ConfigDict(extra="forbid")

    item_id: str
    sid: str
    tokens: list[int]


class AddItemsResponse(BaseModel):
    model_config = _strict({"added": 1, "version": "v-000001", "n_items": 1683,
                            "items": [{"item_id": "new-1", "sid": "3-18-17-1", "tokens": [3, 18, 17, 1]}]})

    added: int
    version: str = Field(..., description="The run's catalogue version now current (RUN/catalogue/CURRENT).")
    n_items: int = Field(..., description="The served catalogue's size after the update.")
    items: list[AddedItem] = Field(..., description="The SID the served model gives each new item.")


class EncodeResponse(BaseModel):
    model_config = _strict({"sid": "12-3-7-2", "tokens": [12, 3, 7, 2], "catalogue_item": None,
                            "new_item": True})

    sid: str = Field(..., description="Semantic ID, tokens joined by '-'.")
    tokens: list[int]
    catalogue_item: Optional[str] = Field(
        None, description="The catalogue item this input was recognised as (docs/encoding.md), else null.")
    new_item: bool = Field(..., description="True when the input is no catalogue item: its last token is a "
                                            "disambiguation number no catalogue item holds.")


class ItemSID(BaseModel):
    model_config = _strict({"item_id": "50", "sid": "12-3-7-0", "tokens": [12, 3, 7, 0], "title": "Star Wars"})

    item_id: str
    sid: str
    tokens: list[int]
    title: Optional[str] = None


class Health(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: str
    model: str
    seed: int
    model_type: str
    generative: bool = Field(..., description="True for SID models (beam search over Semantic IDs), false "
                                              "for models that score every item (SASRec, popularity).")
    device: str
    n_items: int
    n_levels: Optional[int] = Field(..., description="Tokens per SID (null when the run has no SIDs).")
    mask_seen_default: bool = Field(..., description="What a request without mask_seen gets.")
    auth: bool = Field(..., description="Whether the server asks for a bearer token (--token).")
    max_history_used: int = Field(..., description="How many of the most recent history items the model reads.")
    queue_depth: int
    text_encoding: bool = Field(..., description="Whether POST /encode accepts text (the run has text embeddings "
                                                 "and the server's --text-model is not off).")
    text_model_loaded: bool = Field(..., description="Whether the text model is loaded (it loads in the background "
                                                     "at start; a text /encode before waits for it).")
    text_template: Optional[str] = None
    embedding_dim: Optional[int] = None
    catalogue_version: Optional[str] = Field(None, description="The run's catalogue version served (RUN/catalogue, "
                                                              "items added without retraining); null: none added.")


class ErrorResponse(BaseModel):
    model_config = _strict({"detail": "unknown item id(s): ['99999'] (1 of 3 history items)"})

    detail: str = Field(..., description="What is wrong, naming the value, and how to fix it.")


class FieldError(BaseModel):
    model_config = ConfigDict(extra="forbid")

    loc: list[Union[str, int]]
    msg: str
    type: str


class ValidationErrorResponse(BaseModel):
    model_config = _strict({"detail": "k: Input should be less than or equal to 100 (got 1000)",
                            "errors": [{"loc": ["body", "k"], "msg": "Input should be less than or equal to 100",
                                        "type": "less_than_equal"}]})

    detail: str = Field(..., description="Every problem, naming the field and the value.")
    errors: Optional[list[FieldError]] = None
