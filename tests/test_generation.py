"""Constrained decoding, prompts and resume on real models (a tiny random Llama and SmolLM2)."""
import subprocess
import sys

import pytest

from icdstudy.analysis import metrics
from icdstudy.inference import prompts
from icdstudy.inference.evaluation import evaluate
from icdstudy.inference.generation import build_trie
from icdstudy.models.modeling import load_model, load_tokenizer
from tests.conftest import REPO, decoding_settings

LABELS = ["A047", "E119", "E784", "I10", "I4891", "M5450", "S83512A", "T814XXA", "Z23"]
ROWS = [{"id": f"r{i}", "code": LABELS[i % len(LABELS)],
         "input": f"Patient {i} reports thirst and fatigue. " * (1 + i % 4) + "Blood pressure 150/95."}
        for i in range(11)]


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    return load_model(tiny_model_dir, {"key": "tiny"}), load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    return load_model(smollm2_dir, {"key": "smollm2-135m"}), load_tokenizer(smollm2_dir)


def test_prompt_uses_the_chat_template_and_few_shot_turns(smol):
    _, tok = smol
    text, cut = prompts.prompt_for(tok, "Doctor: hi", "dialogue", 100, shots=[{"input": "x", "code": "E119"}])
    assert text.startswith("<|im_start|>system\n" + prompts.SYSTEM) and text.endswith("<|im_start|>assistant\n")
    assert text.count("<|im_start|>user") == 2 and "E11.9<|im_end|>" in text and not cut
    assert "SmolLM" not in text  # our system message replaces the template's default


def test_long_inputs_are_cut_by_tokens_keeping_head_and_tail(smol):
    _, tok = smol
    text = "HEAD " + "filler words here " * 300 + " TAIL"
    cut = prompts.truncate_tokens(tok, text, 64)
    assert cut.was_cut and cut.text.startswith("HEAD") and cut.text.endswith("TAIL") and prompts.ELISION in cut.text
    assert len(tok(cut.text, add_special_tokens=False)["input_ids"]) <= 64 + 8


def test_answer_ids_end_with_eos_and_decode_to_the_dotted_code(smol):
    _, tok = smol
    ids = prompts.answer_ids(tok, "S83512A")
    assert ids[-1] == tok.eos_token_id and tok.decode(ids[:-1]) == "S83.512A"


@pytest.mark.parametrize("which", ["tiny", "smol"])
def test_constrained_decoding_never_emits_a_non_label(which, request):
    model, tok = request.getfixturevalue(which)
    settings = decoding_settings(batch_size=4, top_k=3, max_input_tokens=64)
    preds = evaluate(model, tok, ROWS, LABELS, settings, "dialogue", progress=False)
    q = metrics.quality(preds)
    assert q["valid_rate"] == 1.0
    for p in preds:
        codes = [c["code"] for c in p["candidates"]]
        assert p["pred"] in LABELS and set(codes) <= set(LABELS) and len(codes) == len(set(codes)) == 3
        scores = [c["score"] for c in p["candidates"]]
        assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1.0 + 1e-6
    assert q["top3_match"] is not None and q["top3_match"] >= q["exact_match"]


def test_free_text_mode_parses_and_reports_no_ranking(tiny):
    model, tok = tiny
    settings = decoding_settings(batch_size=4, constrained=False, max_new_tokens=6, max_input_tokens=64)
    preds = evaluate(model, tok, ROWS[:4], LABELS, settings, "dialogue", progress=False)
    q = metrics.quality(preds)
    assert q["top3_match"] is None and q["ece"] is None
    assert all(p["candidates"] is None for p in preds)


def test_resume_gives_the_same_results_as_a_full_run(tiny, tmp_path):
    model, tok = tiny
    settings = decoding_settings(batch_size=3, top_k=2, max_input_tokens=64)
    full = evaluate(model, tok, ROWS, LABELS, settings, "dialogue", progress=False)

    resume = tmp_path / "resume.jsonl"
    calls = {"n": 0}
    import icdstudy.inference.generation as gen

    original = gen.generate_batch

    def crash_after_two(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return original(*a, **k)

    gen.generate_batch = crash_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            evaluate(model, tok, ROWS, LABELS, settings, "dialogue", resume_file=resume, progress=False)
    finally:
        gen.generate_batch = original
    assert len(resume.read_text().splitlines()) == 1 + 6  # header + two batches of three

    counted = {"n": 0}

    def counting(*a, **k):
        counted["n"] += 1
        return original(*a, **k)

    gen.generate_batch = counting
    try:
        resumed = evaluate(model, tok, ROWS, LABELS, settings, "dialogue", resume_file=resume, progress=False)
    finally:
        gen.generate_batch = original
    assert counted["n"] == 2  # only the two unfinished batches ran
    strip = lambda rows: [{k: v for k, v in r.items() if k != "latency_s"} for r in rows]  # noqa: E731
    assert strip(resumed) == strip(full)

    # other settings: the old resume file is not reused
    other = decoding_settings(batch_size=3, top_k=1, max_input_tokens=64)
    evaluate(model, tok, ROWS[:3], LABELS, other, "dialogue", resume_file=resume, progress=False)
    assert len(resume.read_text().splitlines()) == 1 + 3


def test_trie_masks_everything_off_the_label_paths(tiny):
    _, tok = tiny
    trie = build_trie(tok, LABELS)
    first = set(trie.allowed([]))
    assert first == {prompts.answer_ids(tok, c)[0] for c in LABELS}
    assert trie.allowed([tok.eos_token_id]) == []


def test_the_trie_processor_renormalizes_over_the_allowed_tokens_exactly():
    """Hand-built: a 10-token vocabulary, labels [3, 4, EOS], [3, 5, EOS], [6, EOS]; beams at every depth, one past EOS
    and one off the trie. Each row's scores are the log-softmax over exactly the tokens the trie allows there."""
    import torch

    from icdstudy.inference.generation import LabelTrie, TrieLogitsProcessor

    eos, prompt = 9, [1, 2, 0]
    proc = TrieLogitsProcessor(LabelTrie({"A": [3, 4, eos], "B": [3, 5, eos], "C": [6, eos]}), len(prompt), eos)
    generated = [[], [3], [3, 5], [6, eos], [7]]
    allowed = [{3, 6}, {4, 5}, {eos}, {eos}, {eos}]
    rows = [torch.tensor([prompt + g]) for g in generated]  # one beam at a time: their lengths differ
    scores = torch.log_softmax(torch.randn(len(generated), 10, generator=torch.Generator().manual_seed(0)), dim=-1)
    out = torch.cat([proc(r, scores[i:i + 1].clone()) for i, r in enumerate(rows)])  # it writes into what it is given
    for row, ok in enumerate(allowed):
        keep = sorted(ok)
        want = scores[row, keep] - torch.logsumexp(scores[row, keep], dim=0)
        assert torch.allclose(out[row, keep], want, atol=1e-6)
        assert torch.isinf(out[row, [t for t in range(10) if t not in ok]]).all()
        assert torch.exp(out[row]).sum().item() == pytest.approx(1.0, abs=1e-6)
    # all beams in one call (as generate calls it) give the same rows
    same_len = torch.tensor([prompt + [3, 5], prompt + [6, eos], prompt + [3, 4]])
    together = proc(same_len, scores[:3].clone())
    for i, g in enumerate([[3, 5], [6, eos], [3, 4]]):
        assert torch.equal(together[i], proc(torch.tensor([prompt + g]), scores[i:i + 1].clone())[0])


def test_the_processor_gives_todays_candidates_and_scores(tiny):
    """Against the processor it replaced (benchmarks/run.py keeps it as the naive way): the same beams."""
    import importlib.util

    from icdstudy.inference import generation

    spec = importlib.util.spec_from_file_location("bench", REPO / "benchmarks" / "run.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    model, tok = tiny
    settings = decoding_settings(batch_size=4, top_k=3, max_input_tokens=64)
    now = evaluate(model, tok, ROWS, LABELS, settings, "dialogue", progress=False)
    real = generation.TrieLogitsProcessor
    generation.TrieLogitsProcessor = bench.RowByRowTrieProcessor
    try:
        before = evaluate(model, tok, ROWS, LABELS, settings, "dialogue", progress=False)
    finally:
        generation.TrieLogitsProcessor = real
    strip = lambda rows: [{k: v for k, v in r.items() if k != "latency_s"} for r in rows]  # noqa: E731
    for a, b in zip(strip(now), strip(before)):
        assert [c["code"] for c in a["candidates"]] == [c["code"] for c in b["candidates"]]
        assert [c["score"] for c in a["candidates"]] == pytest.approx([c["score"] for c in b["candidates"]], abs=2e-6)


def test_unreachable_hub_model_fails_with_one_clear_line(tmp_path):
    params = tmp_path / "params.yaml"
    import yaml

    full = yaml.safe_load((REPO / "params.yaml").read_text())
    full["models"]["ghost"] = {"hub_id": "nobody/no-such-model-xyz", "path": None, "dtype": "auto", "load_in_4bit": False}
    params.write_text(yaml.safe_dump(full))
    proc = subprocess.run([sys.executable, str(REPO / "stages/base_model.py"), "ghost", "--params", str(params),
                           "--out", str(tmp_path / "out")], capture_output=True, text=True)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "model 'ghost'" in lines[0] and "models.ghost.path" in lines[0], proc.stderr
    assert not (tmp_path / "out").exists()


def test_beams_reading_the_prompt_once_rank_like_plain_beam_search(smollm2_dir):
    """prefill_once hands generate a cache of each prompt repeated per beam: same candidates, same scores."""
    from dataclasses import replace

    from icdstudy.inference.generation import generate_batch

    model = load_model(smollm2_dir, {"key": "smollm2-135m", "dtype": "float32"})
    tok = load_tokenizer(smollm2_dir)
    texts = [prompts.prompt_for(tok, r["input"], "dialogue")[0] for r in ROWS[:4]]  # different lengths: left padding
    trie = build_trie(tok, LABELS)
    settings = decoding_settings(top_k=3, max_new_tokens=8)
    shared = generate_batch(model, tok, texts, settings, trie, frozenset(LABELS))
    plain = generate_batch(model, tok, texts, replace(settings, share_prefill=False), trie, frozenset(LABELS))
    for a, b in zip(shared, plain):
        assert [c["code"] for c in a["candidates"]] == [c["code"] for c in b["candidates"]]
        assert [c["score"] for c in a["candidates"]] == pytest.approx([c["score"] for c in b["candidates"]], abs=1e-4)
