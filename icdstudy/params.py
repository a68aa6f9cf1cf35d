"""Reading params.yaml: one section per stage, with errors that name the missing key."""
from __future__ import annotations

from pathlib import Path

import yaml


class ParamError(Exception):
    pass


def load_params(path: str | Path = "params.yaml") -> dict:
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def section(params: dict, name: str) -> dict:
    if name not in params:
        raise ParamError(f"params.yaml: section {name!r} is missing")
    return params[name]


def model_entry(params: dict, key: str) -> dict:
    models = section(params, "models")
    if key not in models:
        raise ParamError(f"params.yaml: model {key!r} is not registered under models (registered: {', '.join(models)})")
    return {"key": key, **models[key]}
