"""Retrieval few-shot and the knn-tfidf floor: neighbours are real, never the row itself or a
copy of its text, and reach the prompt and the predictions."""

import pytest

from icdstudy.inference import prompts
from icdstudy.inference.evaluation import evaluate, few_shot_examples
from icdstudy.models.modeling import load_model, load_tokenizer
from icdstudy.neighbours.copies import copy_key
from icdstudy.neighbours.retrieval import Neighbour, Retriever, knn_candidates
from tests.conftest import REPO, decoding_settings

RETRIEVAL = {"ngram_max": 2, "min_df": 1, "sublinear_tf": True, "neighbours": 10}
TRAIN = [
    {"id": "t0", "code": "E119", "input": "Thirst, polyuria and a raised HbA1c of 8.1 percent."},
    {"id": "t1", "code": "E119", "input": "Type 2 diabetes follow up, HbA1c 7.4, metformin refill."},
    {"id": "t2", "code": "I10", "input": "Blood pressure 162/98 on two visits, no target organ damage."},
    {"id": "t3", "code": "I10", "input": "Hypertension review: amlodipine, blood pressure now 138/86."},
    {"id": "t4", "code": "S83512A", "input": "Twisted the left knee playing football, ACL tear on MRI."},
    {"id": "t5", "code": "Z23", "input": "Here for the influenza vaccine, no complaints today."},
]


def test_nearest_neighbours_rank_by_content_and_are_deterministic():
    r = Retriever(TRAIN)
    query = {"id": "q", "input": "Knee gave way at football, MRI shows a torn ACL."}
    found = r.search([query], 3)[0]
    assert found[0].id == "t4" and found[0].code == "S83512A"
    assert [n.score for n in found] == sorted((n.score for n in found), reverse=True)
    assert 0 < found[0].score <= 1
    assert r.search([query], 3) == [found]


def test_a_row_never_retrieves_itself_or_a_copy_of_its_text():
    train = TRAIN + [{"id": "t6", "code": "E119", "input": "  THIRST, polyuria and a raised   HbA1c of 8.1 percent. "}]
    r = Retriever(train)
    own = r.search([train[0]], 10)[0]  # a training row queried against its own split
    assert "t0" not in {n.id for n in own} and "t6" not in {n.id for n in own}, own
    assert len(own) == len(train) - 2
    # a test row whose text duplicates training rows (after case and whitespace folding)
    dup = r.search([{"id": "new", "input": "thirst, polyuria and a raised HbA1c of 8.1 percent."}], 3)[0]
    assert {"t0", "t6"}.isdisjoint(n.id for n in dup) and dup[0].code == "E119"
    shots = few_shot_examples(train, train, 3, RETRIEVAL)
    for row, chosen in zip(train, shots):
        assert len(chosen) == 3 and row["id"] not in {s["id"] for s in chosen}, row["id"]
        assert all(copy_key(s["input"]) != copy_key(row["input"]) for s in chosen), row["id"]


def test_each_row_is_shown_its_own_nearest_examples():
    queries = [{"id": "a", "input": "HbA1c 9 and thirst"}, {"id": "b", "input": "knee ACL tear at football"}]
    near = few_shot_examples(TRAIN, queries, 2, RETRIEVAL)
    assert near[0][0]["code"] == "E119" and near[1][0]["code"] == "S83512A"
    assert few_shot_examples(TRAIN, queries, 0, RETRIEVAL) == [[], []]


def test_knn_candidates_vote_by_summed_similarity():
    ns = [Neighbour(0, "a", "I10", 0.5), Neighbour(1, "b", "E119", 0.6), Neighbour(2, "c", "I10", 0.3)]
    cands = knn_candidates(ns, 5)
    assert [c["code"] for c in cands] == ["I10", "E119"]  # 0.8 summed beats the single best 0.6
    assert cands[0]["score"] == pytest.approx(0.8 / 1.4, abs=1e-6) and sum(c["score"] for c in cands) == pytest.approx(1)
    assert knn_candidates(ns, 1) == cands[:1]


def test_shots_are_cut_to_max_shot_tokens_and_the_input_keeps_its_budget(smollm2_dir):
    tok = load_tokenizer(smollm2_dir)
    long = "HEAD " + "the patient describes a long history " * 60 + " TAIL"
    text, cut = prompts.prompt_for(tok, "Doctor: knee pain", "dialogue", 64, [{"input": long, "code": "I10"}], 24)
    assert not cut and "Doctor: knee pain" in text and prompts.ELISION in text
    assert "HEAD" in text and "TAIL" in text and text.count("long history") < 12


def test_fewshot_evaluation_records_the_shown_examples(tiny_model_dir):
    model, tok = load_model(tiny_model_dir, {"key": "tiny"}), load_tokenizer(tiny_model_dir)
    test = [{"id": "q1", "code": "I10", "input": "Blood pressure 170/100, started amlodipine."},
            {"id": "t4", "code": "S83512A", "input": "Twisted the left knee playing football, ACL tear on MRI."}]
    settings = decoding_settings(batch_size=2, top_k=2, max_input_tokens=64, few_shot=2, max_shot_tokens=32)
    preds = evaluate(model, tok, test, ["E119", "I10", "S83512A", "Z23"], settings, "note", TRAIN, progress=False,
                     retrieval=RETRIEVAL)
    assert preds[0]["shot_ids"][0] in ("t2", "t3") and len(preds[0]["shot_ids"]) == 2
    assert "t4" not in preds[1]["shot_ids"]  # the same id (and text) as a training row is never shown to itself
    plain = evaluate(model, tok, test, ["E119", "I10"], decoding_settings(batch_size=2, top_k=2), "note", TRAIN,
                     progress=False)
    assert "shot_ids" not in plain[0]


def test_knn_stage_predicts_every_split_with_ranked_neighbours(tmp_path):
    from icdstudy.core.io import read_json, read_jsonl, write_jsonl
    from tests.stage_project import run_stage

    data = tmp_path / "data" / "processed"
    write_jsonl(data / "train.jsonl", TRAIN)
    write_jsonl(data / "val.jsonl", [{"id": "v1", "code": "E119", "input": "HbA1c 8.4 and thirst, on metformin."}])
    write_jsonl(data / "calibration.jsonl", [{"id": "c1", "code": "Z23", "input": "Flu shot, please."}])
    write_jsonl(data / "test.jsonl", [{"id": "q1", "code": "I10", "input": "Blood pressure 170/100 on amlodipine."},
                                      {"id": "q2", "code": "Z23", "input": "Wants the influenza vaccine today."}])
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text().replace("neighbours: 10", "neighbours: 4"))
    run_stage(tmp_path, "floor", "knn-tfidf")
    rows = read_jsonl(tmp_path / "predictions" / "knn-tfidf.jsonl")
    assert [r["pred"] for r in rows] == ["I10", "Z23"] and [r["pred"] for r in read_jsonl(
        tmp_path / "predictions" / "val" / "knn-tfidf.jsonl")] == ["E119"]
    assert len(read_jsonl(tmp_path / "predictions" / "calibration" / "knn-tfidf.jsonl")) == 1
    assert len(rows[0]["neighbours"]) == 4 and rows[0]["candidates"][0]["code"] == "I10"
    assert [n["score"] for n in rows[0]["neighbours"]] == sorted((n["score"] for n in rows[0]["neighbours"]), reverse=True)
    record = read_json(tmp_path / "predictions" / "runs" / "knn-tfidf.json")
    assert record["neighbours"] == 4 and record["device"] == "cpu" and record["params_total"] > 0


def test_the_retriever_and_prepare_share_one_definition_of_a_copy():
    """Rows that differ only in case and whitespace: prepare keeps one of them, the retriever shows neither."""
    import pandas as pd

    from icdstudy.corpus import data

    texts = ["Thirst and polyuria, HbA1c 8.1.", "  thirst AND polyuria,\tHbA1c 8.1. ", "Thirst and polyuria, HbA1c 8.2."]
    frame = pd.DataFrame({"id": ["a", "b", "c"], "code": ["E119", "E119", "E119"], "dialogue": texts, "description": ""})
    cleaned = data.clean(frame, "dialogue")
    assert [r["id"] for r in cleaned.rows] == ["a", "c"] and cleaned.dropped["duplicate_input"] == 1
    assert copy_key(texts[0]) == copy_key(texts[1]) != copy_key(texts[2])
    found = Retriever([{"id": "b", "code": "E119", "input": texts[1]}, {"id": "c", "code": "I10", "input": texts[2]}])
    assert [n.id for n in found.search([{"id": "a", "input": texts[0]}], 2)[0]] == ["c"]  # b is a's copy: never shown
