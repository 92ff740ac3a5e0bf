"""`recommend`: the top-k SIDs (and their items) a trained model decodes for one history, the library function
behind `sidreasoner recommend`."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sidreasoner.artifacts import Dataset, ModelFolder, SidIndex
from sidreasoner.config import Config, DataConfig, EvalConfig
from sidreasoner.eval.catalogue import Catalogue
from sidreasoner.eval.evaluate import decode_users, load_decoder


def _named(ids: list[int], most: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:most])
    return shown + (f", … ({len(ids)} in all)" if len(ids) > most else "")


@dataclass
class Recommendation:
    """What `recommend` found and what it used: `items` ([{rank, sid, score, item_ids, titles}]), the
    reasoning ('' without thinking), the item ids the prompt holds (oldest first), the given ids that are
    not in the SID index, and how many older known ids were left out to keep `max_history` (the history
    length the training data was cut to, read from `max_history_source`). Unpacks as (items, reasoning)."""

    items: list[dict]
    reasoning: str
    history_used: list[int]
    unknown_ids: list[int] = field(default_factory=list)
    older_dropped: int = 0
    max_history: int = 0
    max_history_source: str = ""

    def __iter__(self):
        return iter((self.items, self.reasoning))

    def notes(self) -> list[str]:
        """One line per thing left out of the history."""
        out = []
        if self.unknown_ids:
            one = len(self.unknown_ids) == 1
            out.append(
                f"item id{'' if one else 's'} {_named(self.unknown_ids)} {'is' if one else 'are'} not in the "
                "SID index: left out of the history"
            )
        if self.older_dropped:
            known = len(self.history_used) + self.older_dropped
            out.append(
                f"the history has {known} known items; the model was trained on at most {self.max_history} "
                f"({self.max_history_source}): the {self.max_history} most recent are used"
            )
        return out


def trained_max_history(dataset: Dataset | os.PathLike, cfg: Config | None) -> tuple[int, str]:
    """The history length the dataset's samples were cut to (preprocess records data.max_history in the
    dataset's stats), else the config's data.max_history; and where it was read."""
    dataset = Dataset.at(dataset)
    stats = dataset.file(Dataset.STATS)
    if stats.is_file():
        try:
            value = dataset.stats().get("data_config", {}).get("max_history")
        except (ValueError, AttributeError) as err:
            raise ValueError(f"{stats}: not a preprocess stats record ({err})") from None
        if isinstance(value, int) and value > 0:
            return value, f"data.max_history in {stats}"
    return (cfg.data if cfg else DataConfig()).max_history, "data.max_history of the config"


def recommend(
    model_dir: ModelFolder | os.PathLike,
    sid_index_dir: SidIndex | os.PathLike,
    dataset_dir: Dataset | os.PathLike,
    history_item_ids: list[int],
    k: int = 10,
    think: bool = False,
    cfg: Config | None = None,
) -> Recommendation:
    """Top-k recommendations for one history. Item ids not in the SID index are left out, and of the
    rest only the most recent `trained_max_history` are used, as training saw them; the result says which."""
    ec = (cfg.eval if cfg else EvalConfig()).model_copy(update={"batch_size": 1})
    ec = ec.model_copy(update={"ks": [k], "num_beams": max(ec.num_beams, k)})
    cat = Catalogue.load(sid_index_dir, dataset_dir)
    known = [int(i) for i in history_item_ids if int(i) in cat.sid_of_item]
    unknown = [int(i) for i in history_item_ids if int(i) not in cat.sid_of_item]
    if not known:
        raise ValueError(f"none of the history item ids ({_named(unknown)}) is in the SID index")
    max_history, source = trained_max_history(dataset_dir, cfg)
    used = known[-max_history:]
    decoder = load_decoder(ModelFolder.at(model_dir), cat.catalogue, ec)
    sids, scores, reasonings = decode_users(decoder, [cat.history_sids(used)], ec, think, cfg.seed if cfg else 0)
    recs = []
    for rank, (sid, score) in enumerate(zip(sids[0][:k], scores[0][:k], strict=True), start=1):
        items = cat.sid_items.get(sid, [])
        recs.append(
            {"rank": rank, "sid": sid, "score": score, "item_ids": items, "titles": [cat.title(i) for i in items]}
        )
    return Recommendation(
        recs,
        reasoning=reasonings[0],
        history_used=used,
        unknown_ids=unknown,
        older_dropped=len(known) - len(used),
        max_history=max_history,
        max_history_source=source,
    )
