"""Architecture facts of the study's models, known without a model hub.

Sources, in order: the config.json of ``models.<key>.path`` or ``models/base/<key>`` when it is
on disk; the hub's config.json when the hub is reachable (or cached); else ``PUBLIC_CONFIGS``,
the published config values of the study models, so planning needs no network.
"""
# transformers and huggingface_hub are imported where used: the plan reads config.json files without them.
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Architecture:
    family: str  # config.model_type: llama, qwen2, mistral
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied_embeddings: bool
    attention_bias: bool = False  # Qwen2 has q/k/v biases
    source: str = "table"

    @property
    def q_dim(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.head_dim

    @property
    def projection_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each of the 7 projections of one decoder layer."""
        h, i = self.hidden, self.intermediate
        return {"q_proj": (h, self.q_dim), "k_proj": (h, self.kv_dim), "v_proj": (h, self.kv_dim),
                "o_proj": (self.q_dim, h), "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}

    @property
    def layer_linear_params(self) -> int:
        return sum(a * b for a, b in self.projection_shapes.values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden

    @property
    def params_total(self) -> int:
        bias = (self.q_dim + 2 * self.kv_dim) if self.attention_bias else 0
        per_layer = self.layer_linear_params + bias + 2 * self.hidden  # two RMSNorms
        head = 0 if self.tied_embeddings else self.embedding_params
        return self.layers * per_layer + self.embedding_params + head + self.hidden

    @property
    def matmul_params(self) -> int:
        """Parameters every token multiplies through (the decoder layers; not embedding or LM head)."""
        return self.layers * self.layer_linear_params

    def lora_params(self, rank: int, modules) -> int:
        shapes = self.projection_shapes
        unknown = [m for m in modules if m not in shapes]
        if unknown:
            raise ValueError(f"recipe.target_modules {unknown}: not projections of a {self.family} layer "
                             f"({', '.join(shapes)})")
        return self.layers * sum(rank * (shapes[m][0] + shapes[m][1]) for m in modules)

    def to_config(self, vocab: int | None = None, layers: int | None = None, **overrides):
        """A transformers config of this architecture (random weights come from it)."""
        from transformers import AutoConfig

        cfg = dict(vocab_size=vocab or self.vocab, hidden_size=self.hidden, intermediate_size=self.intermediate,
                   num_hidden_layers=layers or self.layers, num_attention_heads=self.heads,
                   num_key_value_heads=self.kv_heads, head_dim=self.head_dim, tie_word_embeddings=self.tied_embeddings,
                   max_position_embeddings=32768, **overrides)
        return AutoConfig.for_model(self.family, **cfg)


# Published config.json values of the study models (hub ids as in params.yaml).
PUBLIC_CONFIGS = {
    "meta-llama/Llama-3.1-8B-Instruct": Architecture("llama", 32, 4096, 14336, 32, 8, 128, 128256, False),
    "mistralai/Mistral-7B-Instruct-v0.3": Architecture("mistral", 32, 4096, 14336, 32, 8, 128, 32768, False),
    "meta-llama/Llama-3.2-3B-Instruct": Architecture("llama", 28, 3072, 8192, 24, 8, 128, 128256, True),
    "Qwen/Qwen2.5-3B-Instruct": Architecture("qwen2", 36, 2048, 11008, 16, 2, 128, 151936, True, True),
    "HuggingFaceTB/SmolLM2-135M-Instruct": Architecture("llama", 30, 576, 1536, 9, 3, 64, 49152, True),
}


def from_config(cfg: dict, source: str) -> Architecture:
    heads = cfg["num_attention_heads"]
    return Architecture(
        family=cfg.get("model_type", "llama"), layers=cfg["num_hidden_layers"], hidden=cfg["hidden_size"],
        intermediate=cfg["intermediate_size"], heads=heads, kv_heads=cfg.get("num_key_value_heads") or heads,
        head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads, vocab=cfg["vocab_size"],
        tied_embeddings=bool(cfg.get("tie_word_embeddings", False)),
        attention_bias=bool(cfg.get("attention_bias", cfg.get("model_type") == "qwen2")), source=source)


def _hub_config(hub_id: str) -> dict | None:
    """The hub's config.json from the local cache, or downloaded where the hub is reachable."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        return None
    attempts = [True] if os.environ.get("HF_HUB_OFFLINE") == "1" else [True, False]
    for local_only in attempts:
        try:
            return json.loads(Path(hf_hub_download(hub_id, "config.json", local_files_only=local_only,
                                                   etag_timeout=5)).read_text())
        except Exception:  # not cached, offline, gated: fall through to the table
            continue
    return None


def architecture(entry: dict, base_dir: str | Path | None = None, use_hub: bool = True) -> Architecture:
    """Facts for a registry entry (``models.<key>`` plus ``key``)."""
    for folder in (entry.get("path"), base_dir):
        if folder and (Path(folder) / "config.json").exists():
            return from_config(json.loads((Path(folder) / "config.json").read_text()), f"{folder}/config.json")
    hub_id = entry.get("hub_id")
    if hub_id in PUBLIC_CONFIGS:
        return PUBLIC_CONFIGS[hub_id]
    if hub_id and use_hub:
        cfg = _hub_config(hub_id)
        if cfg:
            return from_config(cfg, f"hub:{hub_id}")
    raise ValueError(f"model {entry.get('key')}: architecture unknown offline; set models.{entry.get('key')}.path to a "
                     "folder with its config.json, or run `dvc repro base@" + str(entry.get("key")) + "` first")


def describe(arch: Architecture) -> dict:
    return {**asdict(arch), "params_total": arch.params_total}
