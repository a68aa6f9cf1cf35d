"""What the GPU host's first run depends on, checked on CPU: template-exact answer tokens for every
family, prompts that do not change with the date, pinned and recorded hub revisions, weights fetched
once and stored once, non-reentrant gradient checkpointing (one process, two gloo processes, 4-bit),
the 4-bit device map per process, one TF32 API, and the plan's memory model against measured runs
on shapes it was not fitted on."""
import datetime
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from icdstudy import icd10
from icdstudy.planning import plan
from icdstudy.inference import prompts
from icdstudy.planning.architectures import PUBLIC_CONFIGS
from icdstudy.inference.generation import build_trie
from icdstudy.planning.measure import build_model, eval_probe, saved_activation_bytes, scaled_down, synthetic_batch
from icdstudy.finetune.examples import IGNORE, build_example
from icdstudy.finetune.training import fine_tune
from tests.conftest import REPO, dvc_env, requires_dvc
from tests.family_models import FAMILIES, load_family_tokenizer
from tests.plan_runs import plan_here
from tests.test_training import CFG, ROWS
from tests.tiny_model import build_tiny_model

CODES = ["E119", "S83512A", "T814XXA", "Z23", "M5450", "I10"]
PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@pytest.fixture(scope="module", params=[*FAMILIES, "chatml"])
def family_tok(request, tmp_path_factory):
    if request.param == "chatml":  # SmolLM2's conventions: pad == eos, ChatML
        from icdstudy.models.modeling import load_tokenizer

        return request.param, load_tokenizer(build_tiny_model(tmp_path_factory.mktemp("chatml") / "m", pad_is_eos=True))
    return request.param, load_family_tokenizer(request.param, tmp_path_factory.mktemp(request.param))


def template_answer_ids(tok, code: str) -> list[int]:
    """The ids the chat template itself gives an assistant turn carrying the code, after its
    generation prompt, up to and including EOS: tokenized by apply_chat_template, not by us."""
    user = [{"role": "user", "content": "x"}]
    fixed = {"date_string": "26 Jul 2024"}
    prompt = tok.apply_chat_template(user, add_generation_prompt=True, tokenize=True, return_dict=False, **fixed)
    full = tok.apply_chat_template(user + [{"role": "assistant", "content": prompts.answer_text(code)}],
                                   tokenize=True, return_dict=False, **fixed)
    assert full[:len(prompt)] == prompt
    answer = full[len(prompt):]
    return answer[:answer.index(tok.eos_token_id) + 1]


# --- answers exactly as the template renders them ----------------------------------------------
def test_answer_ids_are_the_chat_templates_own_tokens(family_tok):
    family, tok = family_tok
    for code in CODES:
        assert prompts.answer_ids(tok, code) == template_answer_ids(tok, code), (family, code)


def test_training_labels_and_the_decoding_trie_carry_the_template_tokens(family_tok):
    family, tok = family_tok
    trie = build_trie(tok, CODES)
    for code in CODES:
        want = template_answer_ids(tok, code)
        ex = build_example(tok, {"input": "Thirsty, tired.", "code": code}, "dialogue", 64)
        assert [l for l in ex["labels"] if l != IGNORE] == want
        prompt_text, _ = prompts.prompt_for(tok, "Thirsty, tired.", "dialogue", 64)
        assert ex["input_ids"] == tok(prompt_text, add_special_tokens=False)["input_ids"] + want
        assert trie.code_for(want, tok.eos_token_id) == code  # the trie holds exactly this path


def test_a_shortlist_prompt_goes_through_each_template_and_keeps_the_templates_answer_ids(family_tok):
    family, tok = family_tok
    shortlist = [{"code": c, "description": icd10.description(c) or "Retired code", "score": s}
                 for c, s in zip(CODES, (0.41, 0.3, 0.17, 0.08, 0.04))]
    row = {"input": "Thirsty, tired, HbA1c 7.2 on metformin.", "code": "E119", "shortlist": shortlist}
    ex = build_example(tok, row, "dialogue", 64)
    messages = prompts.build_messages(row["input"], "dialogue", candidates=shortlist)
    fixed = {"date_string": "26 Jul 2024"}
    prompt = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False, **fixed)
    answer = template_answer_ids(tok, "E119")  # (Mistral folds the system text into the last user turn only, so
    # its answer ids come from a conversation that ends with the answer: template_answer_ids)
    assert ex["input_ids"] == prompt + answer, family  # the template's own prompt, then its own answer ids
    assert [l for l in ex["labels"] if l != IGNORE] == answer
    shown = tok.decode(prompt)
    assert "1. E11.9 Type 2 diabetes mellitus without complications (0.41)" in shown, shown
    assert shown.index("1. E11.9") < shown.index("2. S83.512A") < shown.index("5. M54.50") < shown.index(prompts.QUESTION)


def test_mistral_answers_start_with_the_spaced_piece_its_template_writes(tmp_path):
    tok = load_family_tokenizer("mistral", tmp_path)
    ids = prompts.answer_ids(tok, "E119")
    # [/INST] E11.9</s>: the template's space makes the first piece "▁E" (1181), not "E" (29517)
    assert tok.convert_ids_to_tokens(ids) == ["▁E", "1", "1", ".", "9", "</s>"] and ids[0] == 1181


def test_a_template_whose_answer_does_not_follow_its_prompt_is_refused(tmp_path):
    from icdstudy.models.modeling import ModelError

    tok = load_family_tokenizer("qwen2", tmp_path)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
                         "{% if add_generation_prompt %}{{ 'ANSWER IN CAPS\n' }}{% endif %}")
    with pytest.raises(ModelError, match="does not continue its generation prompt"):
        prompts.answer_ids(tok, "E119")


# --- prompts do not depend on the clock ----------------------------------------------------------
def _fake_clock(day: datetime.date):
    class Clock(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(day.year, day.month, day.day, 9, 30)

    return Clock


def test_prompts_are_the_same_on_two_different_dates(monkeypatch, tmp_path):
    from transformers.utils import chat_template_utils

    tok = load_family_tokenizer("llama", tmp_path)  # the Llama-3.x template calls strftime_now
    messages = prompts.build_messages("Thirsty and tired.", "dialogue", [{"input": "Cough.", "code": "J069"}])
    raw, ours, examples = [], [], []
    for day in (datetime.date(2025, 1, 15), datetime.date(2026, 12, 1)):
        monkeypatch.setattr(chat_template_utils, "datetime", _fake_clock(day))
        raw.append(tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
        ours.append(prompts.render(tok, messages))
        examples.append(build_example(tok, {"input": "Thirsty and tired.", "code": "E119"}, "dialogue", 64))
    assert raw[0] != raw[1] and "15 Jan 2025" in raw[0]  # the fake clock reaches the template
    assert ours[0] == ours[1] and "Today Date: 26 Jul 2024" in ours[0]
    assert examples[0] == examples[1]


# --- hub revisions and files ---------------------------------------------------------------------
MISTRAL_V03_FILES = [".gitattributes", "README.md", "config.json", "consolidated.safetensors", "generation_config.json",
                     "model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                     "model-00003-of-00003.safetensors", "model.safetensors.index.json", "params.json",
                     "special_tokens_map.json", "tokenizer.json", "tokenizer.model", "tokenizer.model.v3",
                     "tokenizer_config.json"]
LLAMA31_FILES = [".gitattributes", "LICENSE", "README.md", "USE_POLICY.md", "config.json", "generation_config.json",
                 "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors", "model-00003-of-00004.safetensors",
                 "model-00004-of-00004.safetensors", "model.safetensors.index.json", "original/consolidated.00.pth",
                 "original/params.json", "original/tokenizer.model", "special_tokens_map.json", "tokenizer.json",
                 "tokenizer_config.json"]


def _index(files):
    return {"weight_map": {f"w{i}": f for i, f in enumerate(f for f in files if f.startswith("model-"))}}


def test_only_what_transformers_loads_is_fetched():
    from icdstudy.models.materialize import files_to_fetch

    mistral = files_to_fetch(MISTRAL_V03_FILES, _index(MISTRAL_V03_FILES))
    assert "consolidated.safetensors" not in mistral and "params.json" not in mistral  # 14.5 GB of duplicate weights
    assert {"config.json", "tokenizer.json", "tokenizer.model", "model.safetensors.index.json",
            "model-00003-of-00003.safetensors"} <= set(mistral)
    llama = files_to_fetch(LLAMA31_FILES, _index(LLAMA31_FILES))
    assert not any(f.startswith("original/") for f in llama) and len([f for f in llama if f.startswith("model-")]) == 4


def test_a_hub_model_is_read_at_one_pinned_commit_and_the_commit_is_recorded(monkeypatch, tmp_path, tiny_model_dir):
    import huggingface_hub

    from icdstudy.models import materialize

    commit = "0123456789abcdef0123456789abcdef01234567"
    files = sorted(p.name for p in tiny_model_dir.iterdir()) + ["consolidated.safetensors", "original/params.json"]
    asked = {}

    class Api:
        def model_info(self, repo, revision=None):
            asked["info"] = (repo, revision)
            return type("Info", (), {"sha": commit, "siblings": [type("S", (), {"rfilename": f}) for f in files]})

    def snapshot_download(repo, revision, local_dir, allow_patterns):
        asked["snapshot"] = (repo, revision, sorted(allow_patterns))
        Path(local_dir).mkdir(parents=True)
        for name in allow_patterns:
            shutil.copy(tiny_model_dir / name, Path(local_dir) / name)
        (Path(local_dir) / ".cache/huggingface").mkdir(parents=True)  # huggingface_hub's bookkeeping

    monkeypatch.setattr(huggingface_hub, "HfApi", Api)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    record = materialize.materialize({"key": "m", "hub_id": "org/model", "revision": "v1.0"}, tmp_path / "m")
    assert asked["info"] == ("org/model", "v1.0") and asked["snapshot"][1] == commit  # every file from one commit
    assert "consolidated.safetensors" not in asked["snapshot"][2]
    assert record["revision"] == commit and record["requested_revision"] == "v1.0"
    assert not (tmp_path / "m/.cache").exists() and (tmp_path / "m/model.safetensors").exists()


def test_data_source_revisions_are_parsed_and_local_files_hashed(tmp_path):
    from icdstudy.corpus.data import load_source, parse_hub_source

    assert parse_hub_source("Ahmad0067/MedSynth") == ("Ahmad0067/MedSynth", None, "train")
    assert parse_hub_source("Ahmad0067/MedSynth@3f2a9c1:train") == ("Ahmad0067/MedSynth", "3f2a9c1", "train")
    csv = tmp_path / "m.csv"
    csv.write_text("Note,Dialogue,ICD10\na,b,E119\n")
    first = load_source(str(csv)).attrs["revision"]
    csv.write_text("Note,Dialogue,ICD10\na,b,E118\n")
    assert first.startswith("sha256:") and load_source(str(csv)).attrs["revision"] != first


@requires_dvc
def test_a_model_output_is_stored_once_on_disk(tmp_path):
    """The committed cache.type links a stage's output to .dvc/cache instead of copying it."""
    project = tmp_path / "p"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True, env=dvc_env())
    shutil.copy(REPO / ".dvc/config", project / ".dvc/config")
    (project / "dvc.yaml").write_text("stages:\n  base:\n    cmd: python -c \"import os; os.makedirs('m', exist_ok=True); "
                                      "open('m/w.bin', 'wb').write(os.urandom(4 << 20))\"\n    outs: [m]\n")
    subprocess.run([sys.executable, "-m", "dvc", "repro", "-q"], cwd=project, check=True, env=dvc_env())
    weights = project / "m/w.bin"
    cached = [p for p in (project / ".dvc/cache").rglob("*") if p.is_file() and p.stat().st_size == 4 << 20]
    assert len(cached) == 1
    assert weights.is_symlink() or os.path.samefile(weights, cached[0])  # one copy of the bytes


# --- gradient checkpointing, 4-bit device map, TF32 ----------------------------------------------
def _losses(live: Path) -> list[float]:
    return [float(line.split("\t")[1]) for line in (live / "plots/metrics/loss.tsv").read_text().splitlines()[1:]]


def loss_recorder(into: list):
    from transformers import TrainerCallback

    class Record(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                into.append(logs["loss"])

    return Record()


@pytest.mark.parametrize("four_bit", [False, True], ids=["bf16-or-fp32", "4bit"])
def test_gradient_checkpointing_trains_with_the_same_losses(four_bit, tmp_path):
    model_dir = build_tiny_model(tmp_path / "m")
    entry = {"key": "tiny", "load_in_4bit": four_bit}
    losses = {False: [], True: []}
    for gc in (False, True):
        out = tmp_path / f"gc{gc}"
        fine_tune(model_dir, entry, ROWS, ROWS[:4], {**CFG, "num_epochs": 1, "gradient_checkpointing": gc}, "dialogue", 64,
                  adapter_dir=out / "adapter", work_dir=out / "work", allow_cpu_4bit=four_bit,
                  extra_callbacks=[loss_recorder(losses[gc])])
    assert len(losses[True]) == 3 and losses[True] == pytest.approx(losses[False], rel=1e-4)


def _train_stage(path: Path, tiny_model_dir: Path, **train) -> dict:
    from icdstudy.core.io import read_json
    from tests.stage_project import project, stage

    run = project(path, tiny_model_dir, num_epochs=1, **train)
    stage(run, REPO / "stages/train.py", "lora-tiny")
    return {"metrics": read_json(run / "metrics/train/lora-tiny.json"), "losses": _losses(run / "dvclive/lora-tiny")}


@pytest.mark.slow
@requires_dvc  # the curves come from DVCLive
@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < 2,
                    reason="two data-parallel processes need two GPUs where CUDA is present (gloo on CPU otherwise)")
def test_gradient_checkpointing_under_two_gloo_processes(tiny_model_dir, tmp_path):
    """DDP with ddp_find_unused_parameters=False: reentrant checkpointing fails here ("Expected to mark
    a variable ready only once"); non-reentrant trains, with the losses of the run without it."""
    plain = _train_stage(tmp_path / "a", tiny_model_dir, num_processes=2)
    ckpt = _train_stage(tmp_path / "b", tiny_model_dir, num_processes=2, gradient_checkpointing=True)
    assert ckpt["metrics"]["num_processes"] == 2 and ckpt["metrics"]["steps"] == plain["metrics"]["steps"] == 3
    assert ckpt["losses"] == pytest.approx(plain["losses"], rel=1e-5)


def test_each_process_loads_its_4bit_model_on_its_own_gpu(monkeypatch, tiny_model_dir):
    import transformers

    from icdstudy.models import modeling

    seen = {}
    monkeypatch.setattr(modeling, "cuda_available", lambda: True)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained",
                        lambda path, **kw: seen.update(kw) or "model")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert modeling.load_model(tiny_model_dir, {"key": "tiny", "load_in_4bit": True}) == "model"
    assert seen["device_map"] == {"": 1} and seen["quantization_config"].load_in_4bit
    monkeypatch.delenv("LOCAL_RANK")
    assert modeling.device_map_4bit(True) == {"": 0} and modeling.device_map_4bit(False) == {"": "cpu"}


def test_tf32_is_set_through_one_api_only(monkeypatch):
    from icdstudy.models import modeling

    def legacy(*_):
        raise AssertionError("the legacy allow_tf32 flag was set beside fp32_precision")

    monkeypatch.setattr(torch._C, "_set_cublas_allow_tf32", legacy)
    monkeypatch.setattr(torch._C, "_set_cudnn_allow_tf32", legacy)
    before = torch.backends.fp32_precision
    try:
        modeling.enable_tf32()
        assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.fp32_precision = before


# --- the plan against measured runs, on shapes it was not fitted on ------------------------------
@pytest.mark.parametrize("hub_id", ["meta-llama/Llama-3.2-3B-Instruct", "Qwen/Qwen2.5-3B-Instruct",
                                    "mistralai/Mistral-7B-Instruct-v0.3"])
@pytest.mark.parametrize("hidden,seq", [(512, 40), (768, 200)])  # fitted at hidden 256, 96 tokens
@pytest.mark.parametrize("dropout,checkpointing", [(0.0, False), (0.1, False), (0.1, True)])
def test_activation_model_out_of_sample(hub_id, hidden, seq, dropout, checkpointing):
    arch = scaled_down(PUBLIC_CONFIGS[hub_id], hidden=hidden, layers=2)
    assert arch.hidden != 256
    tcfg = {"lora_r": 8, "lora_alpha": 16, "lora_dropout": dropout, "gradient_checkpointing": checkpointing,
            "target_modules": PROJECTIONS}
    model = build_model(arch, torch.bfloat16, "cpu", tcfg)
    model.train()
    measured = saved_activation_bytes(model, synthetic_batch(arch.vocab, 2, seq), torch.bfloat16)
    assert measured == pytest.approx(plan.saved_tensor_bytes(arch, 2, seq, dropout, checkpointing), rel=0.12)


@pytest.mark.parametrize("hub_id,four_bit", [("meta-llama/Llama-3.1-8B-Instruct", True),
                                             ("mistralai/Mistral-7B-Instruct-v0.3", True),
                                             ("Qwen/Qwen2.5-3B-Instruct", False)])
@pytest.mark.parametrize("hidden,vocab,batch,seq", [(256, 8192, 4, 160), (384, 16384, 3, 300)])
def test_eval_peak_matches_a_measured_generation_run(hub_id, four_bit, hidden, vocab, batch, seq):
    """Constrained top-5 beam search through generation.decode on a scaled-down architecture:
    the peak of live tensor bytes (weights included) against the plan's evaluation peak."""
    arch = scaled_down(PUBLIC_CONFIGS[hub_id], hidden=hidden, layers=3, vocab=vocab)
    measured = eval_probe(arch, four_bit, batch, seq, top_k=5, beams=5, new_tokens=12, device="cpu")
    predicted = plan.eval_peak_bytes(arch, batch, 5, seq, four_bit, 12) / 2**30
    assert measured["peak_gb"] == pytest.approx(predicted, rel=0.10)
    assert measured["weights_gb"] == pytest.approx(plan.weight_bytes(arch, four_bit) / 2**30, rel=0.02)


def test_the_full_study_plan_fits_80gb_and_names_its_decode_terms():
    run = plan_here("full-study", "--gpu-mem-gb", "80", "--json")
    assert run.returncode == 0, run.stdout
    result = json.loads(run.stdout)
    assert result["fits"] and all(s["fits"] for s in result["stages"])
    zeroshot = next(s for s in result["stages"] if s["stage"] == "predict@zeroshot-llama31-8b")
    assert {"decode:kv_cache", "decode:output_scores", "decode:logits", "decode:cache_concat",
            "decode:gqa_repeat_kv"} <= set(zeroshot["detail"]["parts_gb"])
    text = plan_here("full-study", "--gpu-mem-gb", "80").stdout
    line = text.splitlines()[text.splitlines().index(next(l for l in text.splitlines() if l.startswith("predict@zeroshot-llama31-8b"))) + 1]
    assert "decode GB: weights" in line and "kv cache" in line and "output scores" in line


def test_plan_measure_covers_the_evaluation_stages():
    run = subprocess.run([sys.executable, "-m", "icdstudy.study", "plan", "--json", "--measure", "--steps", "2"],
                         cwd=REPO, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    measured = {m["stage"]: m for m in json.loads(run.stdout)["measured"]}
    assert {"train@lora-shortlist-smollm2-135m", "predict@zeroshot-smollm2-135m", "predict@fewshot-smollm2-135m",
            "predict@lora-shortlist-smollm2-135m"} <= set(measured)
    for m in measured.values():
        assert abs(m["plan_error"]) < 0.12, m
    assert measured["predict@zeroshot-smollm2-135m"]["samples_per_s"] > 0
