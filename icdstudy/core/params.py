"""Reading params.yaml as DVC reads it, validated against icdstudy.core.schema, with errors that name the key at fault.

DVC parses YAML 1.2 (ruamel.yaml): `learning_rate: 1e-4` is a number there, where a YAML 1.1 loader
(PyYAML) reads the string '1e-4' and `on`/`yes` as booleans. Every params reader of the project goes
through ``yaml_load`` so that a stage sees the values `dvc params diff` shows, and every stage gets
the schema's typed values (``load_params``), never a string where a number was meant.
"""
from __future__ import annotations

from pathlib import Path

from ruamel.yaml import YAML, YAMLError

from icdstudy.core.schema import Recipe, validate as check


class ParamError(Exception):
    pass


def yaml_load(text: str):
    """YAML 1.2, as DVC parses params.yaml and dvc.yaml (ruamel.yaml's safe loader)."""

    return YAML(typ="safe", pure=True).load(text)


def load_params(path: str | Path = "params.yaml", validate: bool = True) -> dict:
    """The params as a dict; with ``validate`` (the default) every key is checked and every value
    comes back with the schema's type (a float stays a float, whatever spelling YAML allows)."""

    try:
        params = yaml_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamError(f"{path}: not found; run from the project folder or pass --params") from None
    except YAMLError as exc:
        raise ParamError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not validate:
        return params

    try:
        return check(params, str(path)).model_dump()
    except ValueError as exc:
        raise ParamError(str(exc)) from None


def section(params: dict, name: str) -> dict:
    if name not in params:
        raise ParamError(f"params.yaml: section {name!r} is missing")
    return params[name]


def model_entry(params: dict, key: str) -> dict:
    models = section(params, "models")
    if key not in models:
        raise ParamError(f"params.yaml: model {key!r} is not registered under models (registered: {', '.join(models)})")
    return {"key": key, **models[key]}


def run_recipe(params: dict, run: str | None = None) -> dict:
    """A training recipe, typed: section ``recipe`` with the keys of training run ``run``'s own `recipe` replaced."""

    recipe = {}
    if run is not None:
        runs = params.get("training") or {}
        if run not in runs:
            raise ParamError(f"params.yaml: training.{run}: no such run (training: {', '.join(runs) or 'none'})")
        recipe = runs[run].get("recipe") or {}
    try:
        return Recipe.model_validate({**section(params, "recipe"), **recipe}).model_dump()
    except ValueError as exc:
        raise ParamError(f"params.yaml: training.{run}.recipe: {str(exc).splitlines()[-1]}") from None
