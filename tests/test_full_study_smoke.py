"""The path a new user takes: a newcomer's clone of the team's demo-like study (tests/team_project.py) runs the
full study's smoke run, on MedSynth-shaped rows with tiny random models of the study's four architectures."""
import json
import sys

import pytest
import yaml

from tests.conftest import requires_dvc
from tests.team_project import clone, dvc, ran, sh

pytestmark = [requires_dvc, pytest.mark.slow]

# The smoke run at test size: a few rows, two optimizer steps, short inputs (the CPU has minutes, not hours). Each
# kind of system runs once, over the study's four models and three tokenizer families: 18 stage processes, not 31.
STUDY_MODELS = {"llama31-8b": "llama", "mistral-7b": "mistral", "llama32-3b": "llama", "qwen25-3b": "qwen2"}
def _entry(m: str, prompt: str = "plain", retrieved: int = 0, run: str | None = None, batch: int | None = None) -> str:
    weights = f"models/adapters/{run}" if run else f"models/base/{m}"
    extra = (f", retrieved: {retrieved}" if retrieved else "") + (f", run: {run}" if run else "")
    extra += f", decoding: {{batch_size: {batch}}}" if batch else ""
    return f"{{model: {m}, weights: {weights}, prompt: {prompt}{extra}}}"


# A subset of the full study's tables (their `adds` bases are not selected, so the entries name none).
SELECTED = ["systems.llm={" + ", ".join([
    f"zeroshot-llama31-8b: {_entry('llama31-8b')}", f"fewshot-mistral-7b: {_entry('mistral-7b', 'examples', 3, batch=6)}",
    f"shortlist-mistral-7b: {_entry('mistral-7b', 'shortlist', 5)}",
    f"lora-llama32-3b: {_entry('llama32-3b', run='lora-llama32-3b')}",
    f"lora-shortlist-qwen25-3b: {_entry('qwen25-3b', 'shortlist', 5, run='lora-shortlist-qwen25-3b')}"]) + "}",
    "training={lora-llama32-3b: {model: llama32-3b, prompt: plain}, "
    "lora-shortlist-qwen25-3b: {model: qwen25-3b, prompt: shortlist, retrieved: 5}}"]
TINY_SMOKE = ["decoding.max_samples=6", "decoding.batch_size=6", "decoding.max_input_tokens=96",
              "decoding.max_shot_tokens=48", "recipe.batch_size=2", "recipe.grad_accum=1", "recipe.max_steps=2",
              "recipe.eval_steps=2", "recipe.save_steps=2", "recipe.max_val_samples=4", "recipe.lora_r=4",
              "recipe.lora_alpha=8", "recipe.lora_dropout=0.0", "recipe.learning_rate=0.001", "recipe.warmup_steps=0"]


def test_the_full_study_after_the_demo_reports_exactly_its_own_systems(team, tmp_path, sample_x3_csv):
    """The path a new user takes, in one checkout: the demo-like study (pulled), then the full study's
    smoke run (`study full-study --smoke`) on MedSynth-shaped rows, with tiny random models of the four
    study architectures and their real tokenizers. The report holds exactly the systems selected,
    pairs no two splits and says it is a smoke run; a second `dvc repro` does nothing; the real run's
    params leave the smoke run's downloads and data in place."""
    from tests.family_models import build_family_model

    import pandas as pd

    d = clone(team, "newcomer")
    dvc(d, "pull")
    # MedSynth-shaped rows: the real sample's notes (each three times, made distinct) for its first 40 codes
    rows = pd.read_csv(sample_x3_csv)
    code = next(c for c in rows.columns if c.strip().lower() == "icd10")
    medsynth = tmp_path / "medsynth.csv"
    rows[rows[code].isin(rows[code].drop_duplicates()[:40])].to_csv(medsynth, index=False)
    assert (d / "metrics/eval/lora-tiny.json").exists() and (d / "predictions/zeroshot-tiny.jsonl").exists()
    folders = {f: build_family_model(f, tmp_path / "models" / f) for f in set(STUDY_MODELS.values())}
    paths = [f"models.{key}.path={folders[family]}" for key, family in STUDY_MODELS.items()]
    args = [a for s in [f"data.source={medsynth}", "data.input=note", *paths, *TINY_SMOKE, *SELECTED] for a in ("-S", s)]
    out = sh(d, sys.executable, "-m", "icdstudy.study", "full-study", "--smoke", *args)
    assert {"predict@zeroshot-llama31-8b", "predict@fewshot-mistral-7b", "predict@shortlist-mistral-7b", "train@lora-shortlist-qwen25-3b",
            "predict@lora-llama32-3b", "score", "report"} <= ran(out)
    assert "full-study-smoke" in dvc(d, "exp", "show", "--md", "--no-pager")

    report = (d / "reports" / "report.md").read_text()
    assert report.splitlines()[2].startswith("> **SMOKE RUN: these numbers mean nothing.**")
    expected = sorted(["zeroshot-llama31-8b", "fewshot-mistral-7b", "shortlist-mistral-7b", "lora-llama32-3b",
                       "lora-shortlist-qwen25-3b", "tfidf-logreg", "knn-tfidf"])
    table = report.split("## All systems")[1].split("\n\n")[1]
    assert sorted(line.split(" | ")[0][2:] for line in table.splitlines()[2:]) == expected
    assert sorted(r["system"] for r in json.loads((d / "reports" / "systems.json").read_text())) == expected
    assert "-tiny" not in report  # the demo's systems are not the study's
    assert "not compared" not in report and "- Every system was scored on the same test rows" in report
    answer = [line for line in report.split("## Answer")[1].split("## All systems")[0].splitlines() if line.startswith("- ")]
    assert answer[0].startswith("- **At 95% precision** (certified with δ = 0.1 on ") and len(answer) <= 10
    paired = report.split("## Paired comparisons")[1].split("\n\n")[1].splitlines()[2:]
    assert len(paired) == 2 * 5  # 2 fine-tuned systems x the 5 others (their adds bases, zeroshot-llama32-3b and lora-qwen25-3b, are not selected)
    assert "Near copies:" in (d / "reports" / "data.md").read_text()
    assert ran(dvc(d, "repro")) == set()

    # The real run's params (the smoke keys set back to their committed values, the same local sources)
    # leave prepare, the data card and every base@ as they are: its downloads and data are the smoke run's.
    apply = ("import sys, yaml; from dvc.utils.hydra import apply_overrides; from icdstudy.study import overrides, "
             "run_values; v = run_values('full-study', smoke=False); "
             "v.update({k: yaml.safe_load(x) for k, _, x in (a.partition('=') for a in sys.argv[1:])}); "
             "apply_overrides('params.yaml', [a for a in overrides(v) if a != '-S'])")
    sh(d, sys.executable, "-c", apply, f"data.source={medsynth}", "data.input=note", *paths)
    assert yaml.safe_load((d / "params.yaml").read_text())["smoke"] is False
    changed = set(json.loads(dvc(d, "status", "--json").strip().splitlines()[-1]))
    assert {"predict@zeroshot-llama31-8b", "train@lora-shortlist-qwen25-3b", "report"} <= changed  # the real sizes
    assert not changed & {"prepare", "datacard", *(f"base@{m}" for m in STUDY_MODELS)}, changed
