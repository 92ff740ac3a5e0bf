"""The KServe predictor behind `sidreasoner serve`: top-k items for a user's history, decoded with the
evaluation's constrained SID decoder (`eval.evaluate.decode_users`, the config's eval settings), batched across
concurrent requests (`serve.batcher`), with max(eval beams, k) beams. Items are named by their own ids (the
dataset's `asin` column); an int in a history is read as the id written in decimal. The SID index and the dataset
are the pipeline's quantize-sids and preprocess folders, by default the exported model's `catalogue/sid_index` and
`catalogue/dataset` (export-model writes them there).

v1 (KServe) protocol, `POST /v1/models/<name>:predict`:

    {"instances": [{"history": ["B0009...", ...], "k": 10, "think": false}, ...]}
    -> {"predictions": [{"item_ids": [...], "titles": [...], "sids": [...], "scores": [...],
                         "unknown_item_ids": [...], "history_used": [...]}, ...]}

`history` is oldest first; `k` (default: the largest K the evaluation reports, at most the number of items)
items come best first, each with
its SID and that SID's score (log-probability; items sharing a SID share it); `think` (default false) reasons
first and adds `"reasoning"`. Ids not in the catalogue are left out and listed in `unknown_item_ids`; of the
rest only the most recent `trained_max_history` are used (`history_used`).

v2 (Open Inference) protocol, `POST /v2/models/<name>/infer`, one instance per element:

    inputs:  "history" BYTES [n]  each a JSON list of ids ('["B0009...", "B0010..."]')
             "k"       INT64 [n]  optional
             "think"   BOOL  [n]  optional
    outputs: "recommendations" BYTES [n]  each the JSON object of the v1 prediction

A bad request (no instances, an instance that is not an object, an empty history or one that is not a list of
strings/ints, only unknown ids, k not a positive int or above the number of items, think not a bool, an unknown
field) is answered 400 with the reason."""

from __future__ import annotations

import json
import logging
import os
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidreasoner.artifacts.export import ModelExport
from sidreasoner.config import Config

log = logging.getLogger(__name__)

INSTANCE_FIELDS = ("history", "k", "think")
V2_INPUTS = {"history": "BYTES", "k": "INT64", "think": "BOOL"}
V2_OUTPUT = "recommendations"


def _import_kserve():
    """kserve parses sys.argv with its own argparse parser when first imported (kserve/model_server.py);
    hide our command line from it (`--model` would be read as its `--model_name`)."""
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        import kserve
    finally:
        sys.argv = argv
    return kserve


kserve = _import_kserve()
from kserve.errors import InvalidInput  # noqa: E402
from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse  # noqa: E402

from sidreasoner.serve.batcher import ERRORS, REQUESTS, Batcher  # noqa: E402

# ---------------------------------------------------------------- requests


@dataclass(frozen=True)
class Query:
    """One validated instance: the history's ids as strings (oldest first), how many items, thinking."""

    history: tuple[str, ...]
    k: int
    think: bool


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_instance(instance: Any, index: int, default_k: int, max_k: int) -> Query:
    """One instance of a request, or InvalidInput naming the instance and what is wrong."""
    where = f"instance {index}"
    if not isinstance(instance, dict):
        raise InvalidInput(
            f'{where}: expected an object {{"history": [...], "k": ..., "think": ...}}, got {instance!r}'
        )
    extra = sorted(set(instance) - set(INSTANCE_FIELDS))
    if extra:
        raise InvalidInput(f"{where}: unknown field(s) {', '.join(extra)}; allowed: {', '.join(INSTANCE_FIELDS)}")
    if "history" not in instance:
        raise InvalidInput(f'{where}: no "history" (the item ids the user interacted with, oldest first)')
    history = instance["history"]
    if not isinstance(history, list):
        raise InvalidInput(f"{where}: history must be a list of item ids, got {history!r}")
    if not history:
        raise InvalidInput(f"{where}: history is empty")
    bad = [x for x in history if not (isinstance(x, str) or _is_int(x))]
    if bad:
        raise InvalidInput(f"{where}: history must hold item ids (strings or ints), got {bad[0]!r}")
    k = instance.get("k", default_k)
    if not _is_int(k) or k < 1:
        raise InvalidInput(f"{where}: k must be a positive int, got {k!r}")
    if k > max_k:
        raise InvalidInput(f"{where}: k={k} is above the catalogue's {max_k} items")
    think = instance.get("think", False)
    if not isinstance(think, bool):
        raise InvalidInput(f"{where}: think must be true or false, got {think!r}")
    return Query(tuple(str(x) for x in history), k, think)


def v1_instances(body: Any) -> list[Any]:
    """The instances of a v1 request (parse_instance checks each)."""
    if isinstance(body, bytes):  # kserve passes a body it does not read as JSON through as it is
        raise InvalidInput("the request body is not JSON: send it with Content-Type: application/json")
    if not isinstance(body, dict) or "instances" not in body:
        raise InvalidInput('expected {"instances": [...]}: no "instances" in the request')
    instances = body["instances"]
    if not isinstance(instances, list) or not instances:
        raise InvalidInput(f'"instances" must be a non-empty list, got {instances!r}')
    return instances


def _tensor_values(tensor) -> list:
    data = tensor.data
    if data is None:  # binary tensor data
        data = tensor.as_numpy().reshape(-1).tolist()
    return [x.decode("utf-8") if isinstance(x, bytes) else x for x in data]


def v2_instances(request: InferRequest) -> list[Any]:
    """The v2 request's tensors as v1 instances (parse_instance checks them)."""
    tensors = {}
    for tensor in request.inputs:
        if tensor.name not in V2_INPUTS:
            raise InvalidInput(f"unknown input {tensor.name!r}; inputs: {', '.join(V2_INPUTS)}")
        if tensor.datatype != V2_INPUTS[tensor.name]:
            raise InvalidInput(f"input {tensor.name!r} must be {V2_INPUTS[tensor.name]}, got {tensor.datatype}")
        tensors[tensor.name] = _tensor_values(tensor)
    if "history" not in tensors or not tensors["history"]:
        raise InvalidInput('no "history" input (BYTES [n], each a JSON list of item ids)')
    n = len(tensors["history"])
    for name, values in tensors.items():
        if len(values) != n:
            raise InvalidInput(f"input {name!r} has {len(values)} values, history has {n}")
    instances = []
    for i in range(n):
        try:
            history = json.loads(tensors["history"][i])
        except (TypeError, ValueError) as err:
            raise InvalidInput(f"instance {i}: history must be a JSON list of item ids ({err})") from None
        instance = {"history": history}
        instance.update({name: tensors[name][i] for name in ("k", "think") if name in tensors})
        instances.append(instance)
    return instances


# ---------------------------------------------------------------- the catalogue's ids


@dataclass
class Resolved:
    """A query against the catalogue: the item indices the prompt holds, their ids, the unknown ids."""

    items: list[int]
    used_ids: list[str]
    unknown_ids: list[str]


class ServedCatalogue:
    """Items' own ids <-> the pipeline's item indices, and the evaluation's Catalogue (SIDs, titles)."""

    def __init__(self, cat, ids_of_items: dict[int, str], max_history: int):
        from sidreasoner.eval.metrics import expand_to_items

        self.cat, self.max_history, self._expand = cat, max_history, expand_to_items
        self.id_of_item = ids_of_items
        self.item_of_id = {v: k for k, v in ids_of_items.items()}

    @property
    def num_items(self) -> int:
        return len(self.cat.sid_of_item)

    def resolve(self, query: Query, index: int = 0) -> Resolved:
        """Known ids (with a SID) in order, the most recent max_history of them; InvalidInput when none is known."""
        known, unknown = [], []
        for item_id in query.history:
            item = self.item_of_id.get(item_id)
            (known if item is not None and item in self.cat.sid_of_item else unknown).append((item_id, item))
        if not known:
            names = ", ".join(i for i, _ in unknown[:20]) + (
                f", … ({len(unknown)} in all)" if len(unknown) > 20 else ""
            )
            raise InvalidInput(f"instance {index}: none of the history's item ids is in the catalogue: {names}")
        used = known[-self.max_history :]
        return Resolved([item for _, item in used], [i for i, _ in used], [i for i, _ in unknown])

    def history_sids(self, resolved: Resolved) -> list[str]:
        return self.cat.history_sids(resolved.items)

    def answer(self, query: Query, resolved: Resolved, sids: list[str], scores: list[float], reasoning: str) -> dict:
        """The top-k items of the ranked SIDs (expanded as the evaluation's item metrics do), each with its
        SID and that SID's score."""
        score_of = dict(zip(sids, scores, strict=True))
        items = self._expand(sids, self.cat.sid_items, query.k)
        out = {
            "item_ids": [self.id_of_item[i] for i in items],
            "titles": [self.cat.title(i) for i in items],
            "sids": [self.cat.sid_of_item[i] for i in items],
            "scores": [float(score_of[self.cat.sid_of_item[i]]) for i in items],
            "unknown_item_ids": resolved.unknown_ids,
            "history_used": resolved.used_ids,
        }
        if query.think:
            out["reasoning"] = reasoning
        return out


def load_catalogue(sid_index: str | os.PathLike, dataset: str | os.PathLike, cfg: Config) -> ServedCatalogue:
    from sidreasoner.artifacts import Dataset
    from sidreasoner.eval.catalogue import Catalogue
    from sidreasoner.eval.recommend import trained_max_history

    cat = Catalogue.load(sid_index, dataset)
    items = Dataset.at(dataset).items_table(["item_id", "asin"])
    ids = dict(zip(items["item_id"].to_pylist(), map(str, items["asin"].to_pylist()), strict=True))
    max_history, source = trained_max_history(dataset, cfg)
    log.info(
        "catalogue: %d items with a SID, %d SIDs; histories cut to %d (%s)",
        len(cat.sid_of_item),
        len(cat.catalogue),
        max_history,
        source,
    )
    return ServedCatalogue(cat, ids, max_history)


# ---------------------------------------------------------------- model folders


def local_model_dir(model: str | os.PathLike) -> Path:
    """A local model folder: the path itself, or an s3:// / minio:// / gs:// folder mirrored once (with its
    catalogue/ sub-folders) into the local model cache."""
    from sidreasoner.config.overrides import BUCKET_SCHEMES
    from sidreasoner.model.loading import fetch_bucket_model

    model = os.fspath(model)
    if model.startswith(BUCKET_SCHEMES):
        return fetch_bucket_model(model)
    path = Path(model.removeprefix("file://")).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model folder {path} does not exist")
    return path


def catalogue_dirs(
    model_dir: Path, sid_index: str | os.PathLike | None, dataset: str | os.PathLike | None
) -> tuple[Path, Path]:
    """The SID index and dataset folders: as given, else the exported model's catalogue/ sub-folders."""
    found = []
    for given, default, what in (
        (sid_index, ModelExport.CATALOGUE_SID_INDEX, "--sid-index"),
        (dataset, ModelExport.CATALOGUE_DATASET, "--dataset"),
    ):
        path = Path(given) if given else model_dir / default
        if not path.is_dir():
            hint = "" if given else f" (the exported model's {default}; name the folder with {what})"
            raise FileNotFoundError(f"{path}: no such folder{hint}")
        found.append(path)
    return found[0], found[1]


# ---------------------------------------------------------------- the KServe model


class SidRecommender(kserve.Model):
    """kserve.Model answering v1 and v2 predictions with batched constrained SID decoding."""

    def __init__(
        self,
        cfg: Config,
        model: str | os.PathLike,
        sid_index: str | os.PathLike | None = None,
        dataset: str | os.PathLike | None = None,
        name: str | None = None,
    ):
        super().__init__(name or cfg.serve.name)
        self.cfg, self.model_source = cfg, os.fspath(model)
        self.sid_index, self.dataset = sid_index, dataset
        self.catalogue: ServedCatalogue | None = None
        self.decoder = None
        self.batcher: Batcher | None = None

    @property
    def default_k(self) -> int:
        return min(max(self.cfg.eval.reported_ks), self.catalogue.num_items)

    def load(self) -> bool:
        model_dir = local_model_dir(self.model_source)
        sid_index, dataset = catalogue_dirs(model_dir, self.sid_index, self.dataset)
        self.catalogue = load_catalogue(sid_index, dataset, self.cfg)
        from sidreasoner.eval.evaluate import load_decoder  # torch: after the folders are found

        self.decoder = load_decoder(model_dir, self.catalogue.cat.catalogue, self.cfg.eval)
        serve = self.cfg.serve
        self.batcher = Batcher(self._decode_group, serve.max_batch, serve.max_wait_ms / 1000.0, self.name)
        self.ready = True
        return self.ready

    def stop(self):
        if self.batcher is not None:
            self.batcher.close()
        super().stop()

    def beams(self, k: int) -> int:
        return max(self.cfg.eval.beams, k)

    def _decode_group(self, key: tuple[bool, int], sid_histories: list[list[str]]) -> list[tuple]:
        """One decode_users call for instances of one (think, beams): (sids, scores, reasoning) each."""
        from sidreasoner.eval.evaluate import decode_users

        think, beams = key
        ec = self.cfg.eval.model_copy(update={"num_beams": beams, "ks": [beams], "ks_above_beams": "raise"})
        sids, scores, reasonings = decode_users(self.decoder, sid_histories, ec, think, self.cfg.seed)
        return list(zip(sids, scores, reasonings, strict=True))

    async def answer(self, instances: Sequence[Any]) -> list[dict]:
        """The predictions of validated instances, decoded through the batcher."""
        queries = [parse_instance(x, i, self.default_k, self.catalogue.num_items) for i, x in enumerate(instances)]
        resolved = [self.catalogue.resolve(q, i) for i, q in enumerate(queries)]
        ranked = await self.batcher.submit(
            [
                ((q.think, self.beams(q.k)), self.catalogue.history_sids(r))
                for q, r in zip(queries, resolved, strict=True)
            ]
        )
        return [
            self.catalogue.answer(q, r, list(sids), list(scores), reasoning)
            for q, r, (sids, scores, reasoning) in zip(queries, resolved, ranked, strict=True)
        ]

    async def predict(self, payload, headers: dict[str, str] | None = None):
        protocol = "v2" if isinstance(payload, InferRequest) else "v1"
        REQUESTS.labels(self.name, protocol).inc()
        try:
            if protocol == "v1":
                return {"predictions": await self.answer(v1_instances(payload))}
            predictions = await self.answer(v2_instances(payload))
        except InvalidInput:
            ERRORS.labels(self.name, "invalid_input").inc()
            raise
        except Exception:
            ERRORS.labels(self.name, "decode").inc()
            raise
        data = [json.dumps(p) for p in predictions]
        output = InferOutput(name=V2_OUTPUT, shape=[len(data)], datatype="BYTES", data=data)
        return InferResponse(response_id=payload.id or str(uuid.uuid4()), model_name=self.name, infer_outputs=[output])
