"""The study's model families (Llama-3, Qwen2.5, Mistral-v0.3) through the whole path on CPU:
real tokenizers and turn conventions, tiny random weights. Preflight, LoRA steps, constrained
top-k evaluation and predict must all work for each, as they must on the GPU host."""
import json

import pytest

from tests.conftest import decoding_settings

from icdstudy.inference import prompts
from icdstudy.inference.evaluation import evaluate
from icdstudy.models.modeling import load_for_inference, load_tokenizer
from icdstudy.finetune.examples import build_dataset, collator, preflight
from icdstudy.finetune.training import fine_tune
from tests.family_models import FAMILIES, build_family_model
from tests.test_training import CFG, ROWS

FAMILY_NAMES = list(FAMILIES)
CODES = sorted({r["code"] for r in ROWS})


@pytest.fixture(scope="module", params=FAMILY_NAMES)
def family_dir(request, tmp_path_factory):
    return request.param, build_family_model(request.param, tmp_path_factory.mktemp(request.param) / "base")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_turn_conventions(family, tmp_path):
    tok = load_tokenizer(build_family_model(family, tmp_path / "m"))
    text = tok.apply_chat_template(prompts.build_messages("Thirsty.", "dialogue", [{"input": "Cough.", "code": "J069"}]),
                                   tokenize=False, add_generation_prompt=True)
    assert prompts.SYSTEM in text
    if family == "llama":
        assert tok.eos_token == "<|eot_id|>" and tok.pad_token_id == tok.eos_token_id  # no pad: EOS reused
        assert text.startswith("<|begin_of_text|><|start_header_id|>system") and text.endswith("assistant<|end_header_id|>\n\n")
    elif family == "qwen2":
        assert tok.pad_token == "<|endoftext|>" != tok.eos_token
        assert "J06.9<|im_end|>\n" in text and text.endswith("<|im_start|>assistant\n")
        default = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False)
        assert "You are Qwen" in default  # the default system prompt when none is given
    else:
        assert text.startswith("<s>[INST] Doctor") and " J06.9</s>" in text
        assert text.count(prompts.SYSTEM) == 1 and text.index(prompts.SYSTEM) > text.index("J06.9")  # folded into the last turn
    ids = prompts.answer_ids(tok, "E119")
    assert ids[-1] == tok.eos_token_id and tok.decode(ids[:-1]).strip() == "E11.9"


def test_preflight_lora_evaluation_and_predict(family_dir, tmp_path, monkeypatch, capsys):
    family, base = family_dir
    entry = {"key": family, "dtype": "float32"}
    tok = load_tokenizer(base, padding_side="right")
    ds = build_dataset(tok, ROWS[:4], "dialogue", 64)
    preflight(collator(tok)([ds[i] for i in range(4)]), [r["code"] for r in ROWS[:4]], tok, ds.column_names)

    from icdstudy.analysis.metrics import quality
    from icdstudy.inference.evaluation import Decoding

    cfg = {**CFG, "num_epochs": 1, "select_by": "exact_match"}  # the family's template through the validation decoding
    settings = decoding_settings(batch_size=4, top_k=3, max_new_tokens=10, max_input_tokens=64)
    result = fine_tune(base, entry, ROWS, ROWS[:4], cfg, "dialogue", 64, adapter_dir=tmp_path / "adapter",
                       work_dir=tmp_path / "work", decoding=Decoding(tuple(CODES), settings))
    assert result["steps"] == 3 and result["trainable_params"] > 0 and (tmp_path / "adapter/adapter_config.json").exists()
    assert 0.0 <= result["best_val_exact_match"] <= 1.0 and result["best_step"] in (2, 3)

    tokenizer, model = load_for_inference(base, entry, tmp_path / "adapter")
    preds = evaluate(model, tokenizer, ROWS[:4], CODES, settings, "dialogue", progress=False)
    metrics = quality(preds)
    assert metrics["n"] == 4 and metrics["valid_rate"] == 1.0
    for p in preds:
        assert p["pred"] in CODES and len(p["candidates"]) == 3
        assert sum(c["score"] for c in p["candidates"]) <= 1.0 + 1e-6

    from icdstudy.predict import main as predict_main

    labels = tmp_path / "codes.txt"
    labels.write_text("\n".join(CODES))
    assert predict_main(["--model", str(base), "--adapter", str(tmp_path / "adapter"), "--labels", str(labels),
                         "--top-k", "2", "--json", "--text", "[doctor] Any thirst? [patient] Always."]) == 0
    printed = capsys.readouterr().out  # the training logs came first
    out = json.loads(printed[printed.rindex('{\n  "system"'):])
    assert len(out["candidates"]) == 2 and out["system"] == "lora-base"  # named after the folder
