"""Every bad input answered with one clear line, a non-zero exit, and nothing written.

Each case runs a real stage script (or `predict`) in a scratch project holding the real
params.yaml, a tiny random model registered as `tiny`, and small processed splits."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.stage_project import tiny_tables
from tests.conftest import REPO

ROWS = [{"id": f"r{i}", "input": f"[doctor] case {i} [patient] thirsty and tired {i % 3}", "code": c,
         "description": "x"} for i, c in enumerate(["E119", "I10", "Z23"] * 4)]


def _csv(path: Path, rows: list[tuple[str, str]], header=("ICD10", "Dialogue", "Note")) -> str:
    import csv

    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        for code, text in rows:
            w.writerow([code, text, text][: len(header)])
    return str(path)


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_model_dir):
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(REPO / "stages", root / "stages")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["models"]["tiny"] = {"hub_id": None, "path": None, "embedded": "none/none.gguf", "dtype": "float32",
                                "load_in_4bit": False, "chat_template": None}
    params["base_models"] = ["tiny"]
    params["training"], params["systems"]["llm"] = tiny_tables()
    params["datacard"]["tokenizer"] = "tiny"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    shutil.copytree(tiny_model_dir, root / "models/base/tiny")
    data = root / "data/processed"
    data.mkdir(parents=True)
    for name, rows in (("train", ROWS[:9]), ("val", ROWS[9:10]), ("calibration", ROWS[9:10]), ("test", ROWS[10:])):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "labels.json").write_text(json.dumps({c: {"description": "x"} for c in ("E119", "I10", "Z23")}))
    # an adapter trained on a different base (hidden 32, not 64), and one with a corrupt config
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    other = LlamaForCausalLM(LlamaConfig(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=2, num_key_value_heads=1))
    get_peft_model(other, LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM")).save_pretrained(root / "foreign")
    shutil.copytree(root / "foreign", root / "corrupt")
    shutil.copytree(root / "foreign", root / "models/adapters/lora-shortlist-tiny")  # evaluate-shortlist@tiny meets it
    (root / "corrupt/adapter_config.json").write_text('{"r": 2, "peft_type": ')
    (root / "empty_dir").mkdir()
    return root


def _set(params: dict, dotted: str, value) -> None:
    *path, last = dotted.split(".")
    for p in path:
        params = params[p]
    params[last] = value


def _case(id, argv, expect, params=None, files=None, rc=1):
    return pytest.param(argv, expect, params or {}, files or {}, rc, id=id)


STAGE = [sys.executable]
CASES = [
    _case("top_k-not-a-number", ["stages/predict.py", "zeroshot-tiny"], "decoding.top_k = 'five'", {"decoding.top_k": "five"}),
    _case("unknown-key-typo", ["stages/predict.py", "zeroshot-tiny"], "decoding.topk is not a known key", {"decoding.topk": 5}),
    _case("old-section-name", ["stages/predict.py", "zeroshot-tiny"], "eval: `eval` is now `decoding`", {"eval": {"top_k": 5}}),
    _case("old-recipe-name", ["stages/train.py", "lora-tiny"], "train: `train` is now `recipe`", {"train": {"lora_r": 4}}),
    _case("old-run-key", ["stages/predict.py", "zeroshot-tiny"], "systems.llm.lora-tiny.train: renamed `run`",
          {"systems.llm.lora-tiny.train": "lora-tiny"}),
    _case("old-few-shot-key", ["stages/predict.py", "fewshot-tiny"], "decoding.few_shot: gone: a system shows its nearest "
          "training examples with `prompt: examples`", {"decoding.few_shot": 2}),
    _case("old-style-name", ["stages/predict.py", "zeroshot-tiny"], "`candidates` is now `shortlist`",
          {"systems.llm.shortlist-tiny.prompt": "candidates"}),
    _case("lora-rank-zero", ["stages/train.py", "lora-tiny"], "recipe.lora_r = 0", {"recipe.lora_r": 0}),
    _case("dropout-above-one", ["stages/train.py", "lora-tiny"], "recipe.lora_dropout = 1.5", {"recipe.lora_dropout": 1.5}),
    _case("unknown-projection", ["stages/train.py", "lora-tiny"], "recipe.target_modules", {"recipe.target_modules": ["qproj"]}),
    _case("save-not-eval-steps", ["stages/train.py", "lora-tiny"], "recipe.save_steps (100) must equal recipe.eval_steps (40) "
          "with select_by: exact_match", {"recipe.save_steps": 100}),
    _case("save-not-multiple-of-eval", ["stages/train.py", "lora-tiny"], "multiple of recipe.eval_steps",
          {"recipe.save_steps": 7, "recipe.select_by": "loss"}),
    _case("bad-scheduler", ["stages/train.py", "lora-tiny"], "recipe.lr_scheduler", {"recipe.lr_scheduler": "zigzag"}),
    _case("bad-input-field", ["stages/prepare.py"], "data.input = 'summary'", {"data.input": "summary"}),
    _case("split-over-one", ["stages/prepare.py"], "split.val + split.calibration + split.test", {"split.val": 0.6, "split.test": 0.5}),
    _case("bad-dtype", ["stages/predict.py", "zeroshot-tiny"], "dtype = 'float8'", {"models.tiny.dtype": "float8"}),
    _case("unregistered-model", ["stages/predict.py", "zeroshot-tiny"], "systems.llm.zeroshot-tiny.model: 'nope' is not in "
          "base_models", {"systems.llm.zeroshot-tiny.model": "nope"}),
    _case("negative-batch", ["stages/predict.py", "zeroshot-tiny"], "decoding.batch_size = -1", {"decoding.batch_size": -1}),
    _case("baseline-C-zero", ["stages/floor.py", "tfidf-logreg"], "systems.floors.tfidf-logreg.tfidf-logreg.C = 0",
          {"systems.floors.tfidf-logreg.C": 0}),
    _case("beams-below-k", ["stages/predict.py", "zeroshot-tiny"], "decoding.num_beams (2) must be at least", {"decoding.num_beams": 2}),
    _case("retrieved-zero", ["stages/predict.py", "fewshot-tiny"], "prompt examples needs retrieved >= 1",
          {"systems.llm.fewshot-tiny.retrieved": 0}),
    _case("repeated-seed", ["stages/train.py", "lora-tiny"], "recipe.seeds [1, 1] repeats a seed", {"recipe.seeds": [1, 1]}),
    _case("no-seeds", ["stages/train.py", "lora-tiny"], "recipe.seeds = []", {"recipe.seeds": []}),
    _case("old-seed-key", ["stages/train.py", "lora-tiny"], "recipe.seed is not a known key", {"recipe.seed": 42}),
    _case("knn-no-neighbours", ["stages/floor.py", "knn-tfidf"], "retrieval.neighbours = 0", {"retrieval.neighbours": 0}),
    _case("missing-source-file", ["stages/prepare.py"], "file not found", {"data.source": "nowhere.csv"}),
    _case("unknown-scheme", ["stages/prepare.py"], "unknown source scheme", {"data.source": "ftp://host/x.csv"}),
    _case("one-row-per-code", ["stages/prepare.py"], "no code has at least split.min_rows_per_code",
          {"data.source": "one_per_code.csv"}, {"one_per_code.csv": [(c, f"text {c}") for c in
                                                                     ("E119", "I10", "Z23", "J069", "K219", "M545")]}),
    _case("one-code-only", ["stages/prepare.py"], "only 1 distinct code", {"data.source": "one_code.csv"},
          {"one_code.csv": [("E119", f"text {i}") for i in range(8)]}),
    _case("no-code-column", ["stages/prepare.py"], "missing column(s) ICD10", {"data.source": "no_code.csv"},
          {"no_code.csv": None}),
    _case("all-dialogues-empty", ["stages/prepare.py"], "no rows left after cleaning", {"data.source": "empty.csv"},
          {"empty.csv": [("E119", ""), ("I10", "")]}),
    _case("empty-val-split-eval", ["stages/predict.py", "zeroshot-tiny"], "data/processed/val.jsonl has no samples",
          files={"data/processed/val.jsonl": ""}),
    _case("adapter-missing", ["stages/predict.py", "lora-tiny"],
          "models/adapters/lora-tiny holds no adapter; run `dvc repro train@lora-tiny` first"),
    _case("adapter-corrupt", ["-m", "icdstudy.predict", "--model", "tiny", "--adapter", "corrupt", "--text", "x"],
          "adapter_config.json is not valid JSON", rc=2),
    _case("adapter-other-base", ["-m", "icdstudy.predict", "--model", "tiny", "--adapter", "foreign", "--text", "x"],
          "trained on another base model", rc=2),
    _case("adapter-other-base-eval", ["stages/predict.py", "lora-shortlist-tiny"], "trained on another base model"),
    _case("predict-top-k-zero", ["-m", "icdstudy.predict", "--top-k", "0", "--text", "x"], "--top-k must be at least 1", rc=2),
    _case("predict-batch-no-column", ["-m", "icdstudy.predict", "--model", "tiny", "--input", "batch.csv"], "no column input",
          files={"batch.csv": "foo,bar\n1,2\n"}, rc=2),
    _case("params-not-yaml", ["stages/floor.py", "tfidf-logreg"], "not valid YAML", files={"params.yaml": "data: [unclosed\n"}),
    _case("plain-with-retrieved", ["stages/predict.py", "zeroshot-tiny"], "retrieved = 2 with prompt plain",
          {"systems.llm.zeroshot-tiny.retrieved": 2}),
    _case("run-unknown-key", ["stages/train.py", "lora-shortlist-tiny"],
          "training.lora-shortlist-tiny.recipe.epochs: not a recipe key", {"training.lora-shortlist-tiny.recipe": {"epochs": 1}}),
    _case("run-bad-value", ["stages/train.py", "lora-shortlist-tiny"], "training.lora-shortlist-tiny.recipe: ",
          {"training.lora-shortlist-tiny.recipe": {"learning_rate": 5}}),
    _case("weights-of-another-run", ["stages/predict.py", "zeroshot-tiny"],
          "systems.llm.lora-tiny.weights: 'models/adapters/other'", {"systems.llm.lora-tiny.weights": "models/adapters/other"}),
    _case("prompt-unlike-its-run", ["stages/predict.py", "zeroshot-tiny"], "a fine-tuned system is shown the prompts it "
          "was trained on", {"systems.llm.lora-tiny.prompt": "shortlist", "systems.llm.lora-tiny.retrieved": 5}),
    _case("run-no-system-uses", ["stages/train.py", "lora-tiny"], "training.spare-tiny: no system uses this run",
          {"training.spare-tiny": {"model": "tiny", "prompt": "plain"}}),
    _case("decoding-unknown-key", ["stages/predict.py", "zeroshot-tiny"],
          "systems.llm.zeroshot-tiny.decoding.beams: not a decoding key", {"systems.llm.zeroshot-tiny.decoding": {"beams": 1}}),
    _case("system-unknown", ["stages/predict.py", "lora-fewshot-tiny"], "'lora-fewshot-tiny' is not a system of params.yaml"),
]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts}


@pytest.mark.parametrize("argv,expect,overrides,files,rc", CASES)
def test_bad_input(project, argv, expect, overrides, files, rc):
    params_file = project / "params.yaml"
    original = params_file.read_text()
    kept = {name: (project / name).read_text() for name in files if (project / name).exists()}
    written = []
    try:
        if overrides:
            params = yaml.safe_load(original)
            for key, value in overrides.items():
                _set(params, key, value)
            params_file.write_text(yaml.safe_dump(params, sort_keys=False))
        for name, content in files.items():
            path = project / name
            if isinstance(content, list):
                _csv(path, content)
            elif content is None:
                _csv(path, [("", "x")], header=("Dialogue",))
            else:
                path.write_text(content)
            written.append(path)
        before = _snapshot(project)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
        run = subprocess.run([*STAGE, *argv], cwd=project, capture_output=True, text=True, env=env, timeout=300)
        after = _snapshot(project)
    finally:
        params_file.write_text(original)
        for path in written:
            if path.name != "params.yaml":
                path.unlink(missing_ok=True)
        for name, text in kept.items():
            (project / name).write_text(text)
    assert run.returncode == rc, run.stdout + run.stderr
    assert expect in run.stderr, run.stderr
    assert "Traceback" not in run.stderr
    errors = [l for l in run.stderr.splitlines() if "error:" in l]
    assert len(errors) == 1, run.stderr
    assert after == before, f"files written or changed: {set(after.items()) ^ set(before.items())}"


def test_out_of_memory_is_explained_and_the_rerun_resumes(project, monkeypatch, capsys):
    import runpy

    import torch

    from icdstudy.inference import generation

    params_file = project / "params.yaml"
    original = params_file.read_text()
    params = yaml.safe_load(original)
    params["decoding"]["batch_size"] = 1
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", ["predict.py", "zeroshot-tiny"])
    real = generation.generate_batch
    calls = []

    def oom_on_second_test_batch(*args, **kwargs):  # one validation row, one calibration row, then two test rows
        calls.append(1)
        if len(calls) == 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(*args, **kwargs)

    try:
        monkeypatch.setattr(generation, "generate_batch", oom_on_second_test_batch)
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(project / "stages/predict.py"), run_name="__main__")
        assert stop.value.code == 1
        err = capsys.readouterr().err
        assert "out of memory" in err and "systems.llm.zeroshot-tiny.decoding.batch_size" in err and "icdstudy.study plan" in err
        resume = project / ".resume/zeroshot-tiny-test.jsonl"
        assert len(resume.read_text().splitlines()) == 2  # the header and the finished first sample
        assert not (project / "predictions").exists()

        monkeypatch.setattr(generation, "generate_batch", real)
        with pytest.raises(SystemExit) as stop:
            runpy.run_path(str(project / "stages/predict.py"), run_name="__main__")
        assert stop.value.code == 0
        out = capsys.readouterr().out
        assert "resuming: 1 of 1" in out and "resuming: 1 of 2" in out
        assert len((project / "predictions/zeroshot-tiny.jsonl").read_text().splitlines()) == 2
    finally:
        params_file.write_text(original)
        shutil.rmtree(project / "metrics", ignore_errors=True)
        shutil.rmtree(project / "predictions", ignore_errors=True)
        shutil.rmtree(project / ".resume", ignore_errors=True)
