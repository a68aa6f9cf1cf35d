"""Reading params.yaml: validated against icdstudy.schema, errors that name the key at fault."""
from __future__ import annotations

from pathlib import Path

import yaml


class ParamError(Exception):
    pass


def load_params(path: str | Path = "params.yaml", validate: bool = True) -> dict:
    """The params as a dict; with ``validate`` (the default) every key is checked first."""
    try:
        with open(path, encoding="utf-8") as fh:
            params = yaml.safe_load(fh)
    except FileNotFoundError:
        raise ParamError(f"{path}: not found; run from the project folder or pass --params") from None
    except yaml.YAMLError as exc:
        raise ParamError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if validate:
        from .schema import validate as check

        try:
            check(params, str(path))
        except ValueError as exc:
            raise ParamError(str(exc)) from None
    return params


def section(params: dict, name: str) -> dict:
    if name not in params:
        raise ParamError(f"params.yaml: section {name!r} is missing")
    return params[name]


def model_entry(params: dict, key: str) -> dict:
    models = section(params, "models")
    if key not in models:
        raise ParamError(f"params.yaml: model {key!r} is not registered under models (registered: {', '.join(models)})")
    return {"key": key, **models[key]}


def train_config(params: dict, shortlist: bool = False) -> dict:
    """The training recipe: section ``train``, with ``train_shortlist``'s keys replaced for the shortlist runs."""
    return {**section(params, "train"), **((params.get("train_shortlist") or {}) if shortlist else {})}
