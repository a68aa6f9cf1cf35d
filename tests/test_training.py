"""Label masking, the preflight against each failure of the seed's T5 diary, resume, QLoRA, learning."""
import math

import pytest
import torch

from icdstudy.inference import prompts
from icdstudy.models.modeling import load_tokenizer
from icdstudy.finetune.examples import IGNORE, PreflightError, build_dataset, build_example, collator, preflight
from icdstudy.finetune.training import fine_tune
from tests.conftest import REPO, requires_dvc, decoding_settings
from tests.stage_project import CFG, ROWS, project, run_stage, stage
from tests.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def smol_tok(smollm2_dir):
    return load_tokenizer(smollm2_dir, padding_side="right")


@pytest.fixture(scope="module")
def tiny_tok(tiny_model_dir):
    return load_tokenizer(tiny_model_dir, padding_side="right")


def _first_batch(tok, rows, loss_on_prompt=False):
    ds = build_dataset(tok, rows, "dialogue", 64, loss_on_prompt)
    return ds, collator(tok)([ds[i] for i in range(len(rows))])


@pytest.mark.parametrize("which", ["smol_tok", "tiny_tok"])
def test_labels_are_code_plus_eos_with_prompt_and_padding_masked(which, request):
    tok = request.getfixturevalue(which)
    ds, batch = _first_batch(tok, ROWS[:4])
    width = batch["input_ids"].shape[1]
    for labels, mask, row in zip(batch["labels"].tolist(), batch["attention_mask"].tolist(), ROWS[:4]):
        labels = [IGNORE] * (width - len(labels)) + labels  # only the answer's positions are carried
        supervised = [l for l in labels if l != IGNORE]
        assert supervised == prompts.answer_ids(tok, row["code"])
        assert supervised[-1] == tok.eos_token_id  # kept even where pad == eos
        assert tok.decode(supervised[:-1]) == prompts.answer_text(row["code"])
        assert all(l == IGNORE for l, m in zip(labels, mask) if m == 0)
    assert batch["input_ids"].shape[1] == max(len(x) for x in ds["input_ids"])  # dynamic padding, not 512
    preflight(batch, [r["code"] for r in ROWS[:4]], tok, ds.column_names)


def test_answer_only_logits_give_the_same_loss_as_full_logits(tiny_model_dir, tiny_tok):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    ds = build_dataset(tiny_tok, ROWS[:6], "dialogue", 64)
    feats = [ds[i] for i in range(6)]
    short = collator(tiny_tok, answer_logits_only=True)(feats)
    full = collator(tiny_tok, answer_logits_only=False)(feats)
    assert short["logits_to_keep"] < full["input_ids"].shape[1] // 3
    with torch.no_grad():
        a, b = model(**short), model(**full)
    assert a.logits.shape[1] == short["logits_to_keep"]
    assert torch.allclose(a.loss, b.loss, atol=1e-5)


def test_smollm2_pad_is_eos_and_eos_survives(smol_tok):
    assert smol_tok.pad_token_id == smol_tok.eos_token_id
    ex = build_example(smol_tok, ROWS[0], "dialogue", 64)
    assert ex["labels"][-1] == smol_tok.eos_token_id


def test_preflight_catches_labels_padded_with_the_pad_id(tiny_tok):
    ds = build_dataset(tiny_tok, ROWS[:4], "dialogue", 64)
    from transformers import DataCollatorForSeq2Seq

    wrong = DataCollatorForSeq2Seq(tiny_tok, padding="longest", label_pad_token_id=tiny_tok.pad_token_id)
    with pytest.raises(PreflightError, match="padding positions carry labels"):
        preflight(wrong([ds[i] for i in range(4)]), [r["code"] for r in ROWS[:4]], tiny_tok, ds.column_names)


def test_preflight_catches_unmasked_prompt_tokens(tiny_tok):
    ds, batch = _first_batch(tiny_tok, ROWS[:4], loss_on_prompt=True)
    with pytest.raises(PreflightError, match="prompt tokens are in the loss"):
        preflight(batch, [r["code"] for r in ROWS[:4]], tiny_tok, ds.column_names, loss_on_prompt=False)
    preflight(batch, [r["code"] for r in ROWS[:4]], tiny_tok, ds.column_names, loss_on_prompt=True)  # on purpose: fine


def test_preflight_catches_string_columns(tiny_tok):
    from datasets import Dataset

    ds = Dataset.from_list([{**build_example(tiny_tok, r, "dialogue", 64), "input": r["input"], "code": r["code"]}
                            for r in ROWS[:4]])
    _, batch = _first_batch(tiny_tok, ROWS[:4])
    with pytest.raises(PreflightError, match=r"columns \['input', 'code'\] would reach the collator"):
        preflight(batch, [r["code"] for r in ROWS[:4]], tiny_tok, ds.column_names)


def test_preflight_catches_wrong_targets_and_missing_template(tiny_tok):
    ds, batch = _first_batch(tiny_tok, ROWS[:4])
    with pytest.raises(PreflightError, match="expected"):
        preflight(batch, ["A047"] * 4, tiny_tok, ds.column_names)
    raw = [{"input_ids": tiny_tok(r["input"] + " ")["input_ids"] + prompts.answer_ids(tiny_tok, r["code"])}
           for r in ROWS[:4]]
    for ex, r in zip(raw, ROWS[:4]):
        n = len(prompts.answer_ids(tiny_tok, r["code"]))
        ex["labels"] = [IGNORE] * (len(ex["input_ids"]) - n) + ex["input_ids"][-n:]
    with pytest.raises(PreflightError, match="chat template"):
        preflight(collator(tiny_tok)(raw), [r["code"] for r in ROWS[:4]], tiny_tok, ["input_ids", "labels"])


def test_preflight_catches_a_template_that_does_not_end_turns_with_eos(tmp_path):
    tok = load_tokenizer(build_tiny_model(tmp_path / "m"), padding_side="right")
    tok.eos_token = "<|endoftext|>"  # a mismatch such as Llama-3 base eos vs <|eot_id|> turn ends
    ds, batch = _first_batch(tok, ROWS[:2])
    with pytest.raises(PreflightError, match="ends an assistant turn"):
        preflight(batch, [r["code"] for r in ROWS[:2]], tok, ds.column_names)


def _tiny_run(model_dir, tmp_path, cfg=CFG, **kw):
    return fine_tune(model_dir, {"key": "tiny"}, ROWS, ROWS[:4], cfg, "dialogue", 64, adapter_dir=tmp_path / "adapter",
                     work_dir=tmp_path / "work", live_dir=tmp_path / "live", **kw)


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_last_checkpoint(tiny_model_dir, tmp_path, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, TrainerCallback

    import icdstudy.finetune.training as training

    real_sanity = training.sanity_callback

    class StopAfterSave(TrainerCallback):  # the process dies right after checkpoint-4 is written
        def on_save(self, args, state, control, **kw):
            if state.global_step == 4:
                raise Interrupted

    monkeypatch.setattr(training, "sanity_callback", lambda n: StopAfterSave())
    with pytest.raises(Interrupted):
        _tiny_run(tiny_model_dir, tmp_path)
    assert (tmp_path / "work" / "checkpoint-4").exists() and not (tmp_path / "adapter").exists()

    monkeypatch.setattr(training, "sanity_callback", real_sanity)
    result = _tiny_run(tiny_model_dir, tmp_path)
    assert result["steps"] == 6 and result["resumed_from_step"] == 4
    assert math.isfinite(result["train_loss"]) and result["train_loss"] > 0
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter")
    assert any("lora_" in n for n, _ in model.named_parameters())
    assert not (tmp_path / "work").exists()  # a finished run leaves no checkpoint to "resume" from

    again = _tiny_run(tiny_model_dir, tmp_path)  # a forced rerun trains from scratch
    assert again["resumed_from_step"] == 0 and again["steps"] == 6


def test_qlora_path_on_cpu(tmp_path):
    model_dir = build_tiny_model(tmp_path / "m")
    # bitsandbytes' 4-bit kernels need in_features divisible by the block size: widen the toy model.
    result = fine_tune(model_dir, {"key": "tiny", "load_in_4bit": True}, ROWS, ROWS[:4], {**CFG, "num_epochs": 1},
                       "dialogue", 64, adapter_dir=tmp_path / "adapter", work_dir=tmp_path / "work",
                       allow_cpu_4bit=True)
    assert result["quantized_4bit"] and result["steps"] == 3 and math.isfinite(result["train_loss"])


def test_a_loss_that_does_not_fall_stops_the_run(tiny_model_dir, tmp_path):
    from icdstudy.finetune.training import TrainingSanityError

    with pytest.raises(TrainingSanityError, match="has not fallen"):
        _tiny_run(tiny_model_dir, tmp_path, {**CFG, "learning_rate": 0.0, "sanity_steps": 3})


@pytest.mark.slow
@requires_dvc  # the curve comes from DVCLive
def test_smollm2_really_learns(smollm2_dir, tmp_path):
    """A short real run on the embedded model: validation loss falls well below where it started."""
    from icdstudy.corpus import data

    frame = data.canonicalize(data.load_source("demo"), "dialogue", "demo")
    rows = data.split_by_code(data.clean(frame, "dialogue").rows, 0.15, 0.15, 42)
    from icdstudy.models.modeling import load_for_inference
    from icdstudy.inference.evaluation import Decoding

    cfg = {**CFG, "lora_r": 8, "lora_alpha": 16, "learning_rate": 3e-3, "num_epochs": 1, "batch_size": 4,
           "eval_steps": 6, "save_steps": 6, "warmup_steps": 2, "sanity_steps": 6, "logging_steps": 2,
           "select_by": "exact_match"}
    labels = sorted({r["code"] for r in rows.train})
    decoding = Decoding(tuple(labels), decoding_settings(constrained=True, top_k=1, max_new_tokens=12,
                                                          max_input_tokens=96, batch_size=8))
    val = rows.val[:8]
    result = fine_tune(smollm2_dir, {"key": "smollm2-135m"}, rows.train[:48], val, cfg, "dialogue", 96,
                       adapter_dir=tmp_path / "a", work_dir=tmp_path / "w", live_dir=tmp_path / "live",
                       decoding=decoding)
    losses = [float(l.split("\t")[1]) for l in (tmp_path / "live/plots/metrics/loss.tsv").read_text().splitlines()[1:]]
    assert losses[-1] < 0.5 * losses[0], losses
    assert result["eval_loss"] < 0.4 * losses[0], (result, losses)  # held-out loss fell too, not just memorization
    # the kept checkpoint's validation exact match is what the evaluation stages' decoding gives its adapter
    assert result["best_val_exact_match"] > 0 and result["best_step"] in (6, 12)
    # training scored the kept checkpoint on the weights evaluate@ decodes, through the same Decoding: the same answers
    tokenizer, model = load_for_inference(smollm2_dir, {"key": "smollm2-135m", "dtype": "auto"}, tmp_path / "a")
    again = decoding.run(model, tokenizer, val, "dialogue", progress=False)
    assert round(sum(p["pred"] == p["gold"] for p in again) / len(again), 4) == result["best_val_exact_match"]


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < 2,
                    reason="two data-parallel processes need two GPUs where CUDA is present (gloo on CPU otherwise)")
def test_two_processes_train_data_parallel_under_accelerate(tiny_model_dir, tmp_path):
    """recipe.num_processes: 2 runs the stage as two gloo processes on CPU; one writes the outputs."""
    from icdstudy.core.io import read_json

    tmp_path = project(tmp_path / "run", tiny_model_dir, num_processes=2, num_epochs=1)
    run = stage(tmp_path, REPO / "stages" / "train.py", "lora-tiny")
    assert "process 0 of 2" in run.stdout and "process 1 of 2" in run.stdout
    metrics = read_json(tmp_path / "metrics" / "train" / "lora-tiny.json")
    # 24 examples, 2 processes x batch 4: 3 optimizer steps per epoch (one process would take 6); each process
    # decodes the validation rows at every evaluation, so all keep the same checkpoint
    assert metrics["num_processes"] == 2 and metrics["steps"] == 3 and metrics["select_by"] == "exact_match"
    assert (tmp_path / "models" / "adapters" / "lora-tiny" / "adapter_config.json").exists()


def test_a_finished_seed_is_kept_and_not_retrained(tiny_model_dir, tmp_path, capsys):
    done = tmp_path / "seed.json"
    first = _tiny_run(tiny_model_dir, tmp_path, cfg={**CFG, "num_epochs": 1}, done_file=done)
    again = _tiny_run(tiny_model_dir, tmp_path, cfg={**CFG, "num_epochs": 1}, done_file=done)
    assert again == first and "already trained with these settings" in capsys.readouterr().out
    other = _tiny_run(tiny_model_dir, tmp_path, cfg={**CFG, "num_epochs": 1, "seed": 5}, done_file=done)
    assert other["seed"] == 5 and other["steps"] == first["steps"] and other["train_loss"] != first["train_loss"]


def test_several_seeds_train_evaluate_and_report_their_spread(tiny_model_dir, tmp_path):
    """recipe.seeds [0, 7]: seed 0 is lora-tiny, seed 7 lands in models/adapters/lora-tiny/seeds; predict@ predicts with
    both and score reports the spread."""
    from icdstudy.core.io import read_json

    tmp_path = project(tmp_path / "run", tiny_model_dir, test_rows=ROWS, eval_params={"batch_size": 6, "top_k": 2},
                       seeds=[0, 7], num_epochs=1)
    run_stage(tmp_path, "train", "lora-tiny")
    metrics = read_json(tmp_path / "metrics" / "train" / "lora-tiny.json")
    assert metrics["seeds"] == [0, 7] and metrics["seed"] == 0 and set(metrics["by_seed"]) == {"0", "7"}
    assert metrics["by_seed"]["0"]["train_loss"] != metrics["by_seed"]["7"]["train_loss"]
    assert (tmp_path / "models" / "adapters" / "lora-tiny" / "adapter_config.json").exists()
    assert (tmp_path / "models/adapters/lora-tiny/seeds/seed-7/adapter_config.json").exists()
    assert read_json(tmp_path / "models/adapters/lora-tiny/seeds/seeds.json")["seeds"] == [0, 7]
    assert not (tmp_path / ".resume" / "train-done" / "lora-tiny-seed7").exists()

    run_stage(tmp_path, "predict", "lora-tiny")
    seed7 = (tmp_path / "predictions" / "seeds" / "lora-tiny" / "seed-7.jsonl").read_text().splitlines()
    assert len(seed7) == len(ROWS)
    from tests.test_scoring import score_only

    result = score_only(tmp_path, "lora-tiny")["test"]
    spread = result["seeds"]
    assert spread["seeds"] == [0, 7] and spread["exact_match_by_seed"]["0"] == result["exact_match"]
    assert spread["exact_match_min"] <= spread["exact_match_mean"] <= spread["exact_match_max"]
    assert spread["exact_match_sd"] is not None


class Evaluations:
    """A validation probe that answers from a script, one value per evaluation."""

    def __init__(self, values):
        self.values, self.calls = list(values), 0

    def __call__(self, *args, **kwargs):
        def probe(model):
            self.calls += 1
            return self.values[self.calls - 1]

        return probe


@requires_dvc  # the curve comes from DVCLive
def test_the_checkpoint_kept_is_the_one_with_the_highest_validation_exact_match(tiny_model_dir, tmp_path, monkeypatch):
    import icdstudy.finetune.training as training
    from icdstudy.inference.evaluation import Decoding

    script = Evaluations([0.25, 0.75, 0.5])  # evaluations at steps 2, 4 and 6
    monkeypatch.setattr(training, "exact_match_probe", script)
    result = _tiny_run(tiny_model_dir, tmp_path, {**CFG, "num_epochs": 1, "batch_size": 2, "select_by": "exact_match"},
                       decoding=Decoding(("E119",), decoding_settings(top_k=2, max_input_tokens=64)))
    assert script.calls == 3 and result["steps"] == 6
    assert (result["best_step"], result["best_val_exact_match"], result["select_by"]) == (4, 0.75, "exact_match")
    import csv

    with open(tmp_path / "live/plots/metrics/eval/exact_match.tsv") as fh:
        curve = [(int(r["step"]), float(r["exact_match"])) for r in csv.DictReader(fh, delimiter="\t")]
    assert curve == [(2, 0.25), (4, 0.75), (6, 0.5)]

    by_loss = _tiny_run(tiny_model_dir, tmp_path / "loss", {**CFG, "num_epochs": 1, "batch_size": 2})
    assert by_loss["select_by"] == "loss" and by_loss["best_val_exact_match"] is None  # no decoding at all


def test_exact_match_selection_needs_its_label_set(tiny_model_dir, tmp_path):
    with pytest.raises(PreflightError, match="recipe.select_by: exact_match decodes the validation rows"):
        _tiny_run(tiny_model_dir, tmp_path, {**CFG, "select_by": "exact_match"})


@pytest.mark.parametrize("gpu_path", [False, True], ids=["cpu-path", "gpu-path"])
def test_the_probe_decodes_what_predict_decodes(tiny_model_dir, tmp_path, gpu_path):
    """The checkpoint probe scores the weights predict@ loads from the saved adapter, through the same Decoding:
    equal logits and equal predictions, and the model being trained untouched. gpu-path builds the LoRA model
    as training does on CUDA (bf16 weights, where the CPU path keeps float32 master weights); on a GPU host
    (tools/gpu_check.sh runs this file without DVC) both run on the GPU."""
    import copy

    from icdstudy.finetune.trainer import exact_match_probe
    from icdstudy.finetune.training import _lora_model
    from icdstudy.inference.evaluation import Decoding
    from icdstudy.models.modeling import inference_form, load_for_inference, load_tokenizer

    entry = {"key": "tiny", "dtype": "bfloat16"}
    torch.manual_seed(0)
    model, _ = _lora_model(tiny_model_dir, entry, {**CFG, "lora_r": 4, "lora_alpha": 8}, False, cuda=gpu_path)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:  # a trained adapter, not the zero one LoRA starts from
                p.normal_(0, 0.05)
    assert {p.dtype for n, p in model.named_parameters() if "lora_" not in n} == {
        torch.bfloat16 if gpu_path else torch.float32}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    tokenizer = load_tokenizer(tiny_model_dir, entry)
    model.save_pretrained(tmp_path / "adapter")
    tokenizer.save_pretrained(tmp_path / "adapter")  # the train stage saves it beside the adapter
    _, loaded = load_for_inference(tiny_model_dir, entry, tmp_path / "adapter")

    decoder = inference_form(copy.deepcopy(model), entry)
    ids = torch.tensor([[1, 5, 9, 13, 2, 7]], device=loaded.device)
    with torch.no_grad():
        assert torch.equal(decoder(ids).logits, loaded(ids).logits)
        assert not torch.equal(decoder(ids).logits, model.get_base_model()(ids).logits.bfloat16())  # the adapter is in

    labels = sorted({r["code"] for r in ROWS})
    decoding = Decoding(tuple(labels), decoding_settings(batch_size=3, top_k=2, max_new_tokens=12, max_input_tokens=64))
    exact = exact_match_probe(tokenizer, ROWS, decoding, "dialogue", entry)(model)
    predicted = decoding.run(loaded, tokenizer, ROWS, "dialogue", progress=False)
    assert exact == round(sum(p["pred"] == p["gold"] for p in predicted) / len(ROWS), 4)
    assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())


def test_loss_spike_is_the_worst_loss_after_warmup_over_the_lowest_before_it():
    from icdstudy.finetune.training import loss_spike

    log = [{"step": s, "loss": x} for s, x in [(1, 3.0), (2, 1.0), (3, 0.5), (4, 1.5), (5, 0.4)]] + [{"step": 5, "eval_loss": 9}]
    assert loss_spike(log, 2) == 3.0  # step 4: 1.5 over the 0.5 of step 3
    assert loss_spike(log, 4) == round(0.4 / 0.5, 3)  # only step 5 is after warmup
    assert loss_spike(log[:1], 0) is None

