"""Loading a config: a preset or a file, `--set section.key=value` overrides, and validation
errors that name the key and what is allowed."""

from __future__ import annotations

import copy
import difflib
import json
from typing import Any, get_args, get_origin

from pydantic import BaseModel, ValidationError

from sidreasoner.config.presets import PRESETS, RESEARCH_BUNDLE
from sidreasoner.config.schema import Config
from sidreasoner.errors import ConfigError


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


MAX_DEPTH = 32  # the schema nests 6 deep: cluster.resources.<step>.tolerations.<i>.key


def too_deep(value: Any) -> str | None:
    """The key where `value` nests deeper than MAX_DEPTH (copying or validating it would exhaust the
    stack), or None."""
    todo = [(value, "", 0)]
    while todo:
        node, key, depth = todo.pop()
        if depth > MAX_DEPTH:
            return key
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        todo.extend((item, f"{key}.{name}" if key else str(name), depth + 1) for name, item in items)
    return None


def _parse_value(text: str, annotation: Any = None) -> Any:
    """`--set` values: JSON when they parse as JSON (numbers, true/false, lists, null), else a string. A
    text field takes the text as it is unless it is a JSON string (`model.revision=2024` is "2024")."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return text
    return text if annotation is str and not isinstance(value, str) else value


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return sorted(model.model_fields)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _section_model(path: list[str]) -> type[BaseModel] | None:
    """The model class that holds the key at `path` (all but the last part), or None. A dict of
    models (cluster.resources) takes its key as the next part: cluster.resources.rl-stage3.gpus."""
    model: type[BaseModel] = Config
    parts = iter(path)
    for part in parts:
        annotation = getattr(model.model_fields.get(part), "annotation", None)
        if _is_model(annotation):
            model = annotation
        elif get_origin(annotation) is dict and _is_model(get_args(annotation)[1]) and next(parts, None):
            model = get_args(annotation)[1]
        else:
            return None
    return model


def _check_key(dotted: str) -> Any:
    """The annotation of the field at `dotted`; a ConfigError naming the key when there is none."""
    parts = dotted.split(".")
    mapping = getattr(Config.model_fields.get(parts[0]), "annotation", None)
    if len(parts) == 2 and get_origin(mapping) is dict and not _is_model(get_args(mapping)[1]):
        return get_args(mapping)[1]  # a mapping of plain values (generations.<step>); its validator checks the key
    parent = _section_model(parts[:-1])
    if parent is None:
        raise ConfigError(f"unknown config key '{dotted}': '{'.'.join(parts[:-1])}' is not a section")
    if parts[-1] not in parent.model_fields:
        allowed = _allowed_keys(parent)
        close = difflib.get_close_matches(parts[-1], allowed, n=1)
        hint = f" Did you mean '{'.'.join(parts[:-1] + close)}'?" if close else ""
        raise ConfigError(f"unknown config key '{dotted}'. Allowed here: {', '.join(allowed)}.{hint}")
    return parent.model_fields[parts[-1]].annotation


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """['data.k_core=3', 'sid.method=rkmeans'] -> nested dict; unknown keys fail here, naming the key."""
    nested: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value")
        dotted, raw = item.split("=", 1)
        dotted = dotted.strip()
        annotation = _check_key(dotted)
        node = nested
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        try:
            node[parts[-1]] = _parse_value(raw.strip(), annotation)
        except RecursionError:
            raise ConfigError(f"override '{dotted}': the value is nested deeper than {MAX_DEPTH} levels") from None
    return nested


def _format_validation_error(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(config)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parent = _section_model([str(p) for p in e["loc"][:-1]])
            allowed = ", ".join(_allowed_keys(parent)) if parent else "?"
            msg = f"unknown key. Allowed here: {allowed}"
        elif "input" in e and e["type"] != "missing":
            msg = f"{msg} (got {e['input']!r})"
        lines.append(f"  {key}: {msg}")
    return "invalid config:\n" + "\n".join(lines)


def validate(data: dict[str, Any]) -> Config:
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err)) from None


def load(preset: str = "demo", overrides: list[str] | None = None) -> Config:
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset '{preset}'. Allowed: {', '.join(PRESETS)}")
    return load_from(PRESETS[preset], overrides)


def load_from(base: dict[str, Any], overrides: list[str] | None = None) -> Config:
    """Validate `base` (config sections, e.g. read from a file) with `--set` overrides applied.

    When the result reads a research data bundle (data.format=research), the bundle's SIDs and corpus
    are taken as they are (RESEARCH_BUNDLE) unless the overrides say otherwise."""
    over = parse_overrides(overrides or [])
    for given in (base, over):
        where = too_deep(given)
        if where:
            raise ConfigError(f"config nested deeper than {MAX_DEPTH} levels, at {where[:200]}")
    merged = deep_merge(base, over)
    data = merged.get("data")
    if isinstance(data, dict) and data.get("format") == "research":
        merged = deep_merge(deep_merge(base, RESEARCH_BUNDLE), over)
    cfg = validate(merged)
    check_serving(cfg)
    return cfg


# The bucket schemes of our URIs (data sources, model.base, export.uri); minio:// is read through the S3 API.
BUCKET_SCHEMES = ("s3://", "minio://", "gs://")


def is_bucket_uri(uri: str) -> bool:
    """Whether `uri` names a folder in a bucket: one of BUCKET_SCHEMES with something after it."""
    uri = uri.strip()
    return uri.startswith(BUCKET_SCHEMES) and bool(uri.split("://", 1)[1].strip("/"))


def check_serving(cfg: Config) -> None:
    """serve.enabled needs export.uri to name a bucket: deploy-model serves the exported folder, which KServe's
    storage initializer downloads (a local folder cannot be a storageUri). Checked on whole configs (here), not
    in Config's validators: a step's slice (deploy-model reads no export section) leaves export.uri empty."""
    uri = cfg.export.uri.strip()
    if cfg.serve.enabled and not is_bucket_uri(uri):
        got = f"it is {uri!r}" if uri else "it is empty"
        raise ConfigError(
            f"serve.enabled needs export.uri to be an s3://, minio:// or gs:// URI ({got}): deploy-model serves "
            "the exported model from there (set export.uri=s3://bucket/models/run-1, or serve.enabled=false)"
        )
