"""The MiniOneRec/SIDReasoner on-disk layout: the research code's file names and CSV columns.

The research bundle is read in this layout (data.source=research:<path>), and the dataset, the SID index and
the corpus also export their contents in it (each under its `research/` folder), so users can move between
this pipeline and the research code. The names live here once, for both directions.
"""

from __future__ import annotations

FOLDER = "research"  # where an artifact keeps its export in this layout
SPLITS = ("train", "valid", "test")  # each split's CSVs lie in a folder of this name
INDEX_FOLDER = "index"  # the per-category JSON files and the narrative CSV
INFO_FOLDER = "info"  # the per-category catalogue text files
INDEX_JSON_SUFFIX = ".index.json"  # after `<Cat>` in the SID index's file name
GENERAL_REASONING = "general/sampled_data.arrow"  # general reasoning chats, JSON lines (or Arrow IPC)
SPLIT_COLUMNS = (
    "user_id",
    "history_item_title",
    "item_title",
    "history_item_id",
    "item_id",
    "history_item_sid",
    "item_sid",
)
NARRATIVE_COLUMNS = ("integrated_narrative", "reasoning_path")
ID_COLUMNS = ("user_id", "history_item_id", "item_id")
SID_COLUMNS = ("history_item_sid", "item_sid")
ID_SID_COLUMNS = (*ID_COLUMNS, *SID_COLUMNS)


def split_csv(split: str, category: str) -> str:
    """`train/<Cat>.csv`: one split's samples (the bundle may also name them `<Cat>_*.csv`)."""
    return f"{split}/{category}.csv"


def info_txt(category: str) -> str:
    """`info/<Cat>.txt`: `SID<TAB>title<TAB>item id` per item, the evaluation's catalogue."""
    return f"{INFO_FOLDER}/{category}.txt"


def index_json(category: str) -> str:
    """`index/<Cat>.index.json`: item id -> SID codes, one per level."""
    return f"{INDEX_FOLDER}/{category}{INDEX_JSON_SUFFIX}"


def item_json(category: str) -> str:
    """`index/<Cat>.item.json`: item id -> {"title", "description", ...}."""
    return f"{INDEX_FOLDER}/{category}.item.json"


def item_narratives_json(category: str) -> str:
    """`index/<Cat>.item_enhanced_v2.json`: item id -> {..., "llm_stage2": narrative}."""
    return f"{INDEX_FOLDER}/{category}.item_enhanced_v2.json"


def integrated_narrative_csv(category: str) -> str:
    """`index/<Cat>.integrated_narrative.csv`: samples with `integrated_narrative` and `reasoning_path`; the
    research code reads only the SID columns and the texts, so a bundle's file may lack the ID_COLUMNS."""
    return f"{INDEX_FOLDER}/{category}.integrated_narrative.csv"
