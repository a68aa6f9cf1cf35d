"""Candidate shortlists: a training row never sees itself or a copy of its text, the order is knn's
and deterministic, and the prompt lists each code with its description and score."""
import random

from icdstudy import icd10, prompts
from icdstudy.retrieval import Retriever, knn_candidates
from icdstudy.shortlist import candidate_recall, code_descriptions, gold_rank, shortlist_metrics, with_shortlists

CFG = {"ngram_max": 2, "min_df": 1, "sublinear_tf": True, "neighbours": 3}
TRAIN = [
    {"id": "t0", "code": "E119", "input": "Thirst and polyuria, HbA1c 7.1 on metformin, kidneys fine."},
    {"id": "t1", "code": "E119", "input": "Diabetes follow up, HbA1c 6.9 on metformin, no complications."},
    {"id": "t2", "code": "E1165", "input": "Thirst and polyuria, glucose 380, ran out of metformin."},
    {"id": "t3", "code": "E1122", "input": "Foamy urine, eGFR 41, diabetes on metformin."},
    {"id": "t4", "code": "M25561", "input": "Right knee pain after a run, swelling of the right knee."},
    {"id": "t5", "code": "M25562", "input": "Left knee pain after a run, swelling of the left knee."},
    {"id": "t6", "code": "T814XXA", "input": "Wound redness nine days after gallbladder surgery, pus at the incision.",
     "description": "INFECTION FOLLOWING A PROCEDURE, INITIAL ENCOUNTER"},
    {"id": "t7", "code": "Z23", "input": "Here for the influenza vaccine today."},
    # t7's text again (case and spacing folded), under another code: a copy that must never be shown to t7
    {"id": "t8", "code": "J4520", "input": "  here for the INFLUENZA vaccine   today. "},
]


def _codes(lists):
    return [[c["code"] for c in found] for found in lists]


def test_a_training_row_never_sees_itself_or_a_copy_of_its_text():
    rows = with_shortlists(TRAIN, TRAIN, 8, CFG)
    by_id = {r["id"]: [c["code"] for c in r["shortlist"]] for r in rows}
    # Z23 and J4520 are carried only by t7 and its copy t8: neither row may be offered its own answer
    assert "Z23" not in by_id["t7"] and "J4520" not in by_id["t7"], by_id["t7"]
    assert "J4520" not in by_id["t8"] and "Z23" not in by_id["t8"], by_id["t8"]
    assert "T814XXA" not in by_id["t6"] and "E1122" not in by_id["t3"]  # single-row codes
    assert "E119" in by_id["t0"] and "E119" in by_id["t1"]  # a code with another row is still offered
    # a test row is shown the same way: a copy of a training text is never a neighbour
    test = with_shortlists(TRAIN, [{"id": "q", "code": "Z23", "input": "Here for the influenza vaccine today."}], 8, CFG)
    assert {"Z23", "J4520"}.isdisjoint(c["code"] for c in test[0]["shortlist"])


def test_candidates_follow_knns_ranking_then_the_next_nearest_rows_and_are_deterministic():
    r = Retriever.from_params(TRAIN, CFG)
    query = {"id": "q", "input": "Thirst, polyuria, HbA1c 7 on metformin, knee pain."}
    near = r.search([query], CFG["neighbours"])[0]
    lists = r.shortlists([query], 6, CFG["neighbours"])[0]
    assert lists[:len({n.code for n in near})] == knn_candidates(near, 6)  # knn-tfidf's ranking first
    rest = [n.code for n in r.search([query], len(TRAIN))[0][CFG["neighbours"]:]]
    filled = [c["code"] for c in lists[len({n.code for n in near}):]]
    assert filled == [c for i, c in enumerate(rest) if c not in rest[:i] and c not in {n.code for n in near}][:len(filled)]
    assert all(c["score"] == 0.0 for c in lists[len({n.code for n in near}):])
    assert len(lists) == 6 and len({c["code"] for c in lists}) == 6
    # the same lists on every run and whatever order the queries come in
    queries = [{"id": f"q{i}", "input": t["input"] + " again"} for i, t in enumerate(TRAIN)]
    once = _codes(r.shortlists(queries, 5, 3))
    shuffled = queries[:]
    random.Random(1).shuffle(shuffled)
    again = dict(zip([q["id"] for q in shuffled], _codes(Retriever.from_params(TRAIN, CFG).shortlists(shuffled, 5, 3))))
    assert once == [again[q["id"]] for q in queries]


def test_the_prompt_lists_each_code_with_its_description_and_score_in_order():
    row = with_shortlists(TRAIN, [{"id": "q", "code": "T814XXA", "input": "Redness at the incision after surgery."}],
                          3, CFG)[0]
    block = prompts.candidate_block(row["shortlist"])
    lines = block.splitlines()
    assert lines[0] == prompts.CANDIDATES and len(lines) == 4
    first = row["shortlist"][0]
    assert lines[1] == f"1. {icd10.dotted(first['code'])} {first['description']} ({first['score']:.2f})"
    assert first["code"] == "T814XXA" and first["description"] == "Infection following a procedure, initial encounter"
    text = prompts.user_message(row["input"], "dialogue", row["shortlist"])
    assert text.index(row["input"]) < text.index(prompts.CANDIDATES) < text.index(prompts.QUESTION)
    assert prompts.user_message(row["input"], "dialogue") == prompts.user_message(row["input"], "dialogue", [])


def test_descriptions_come_from_the_table_else_the_data_set():
    d = code_descriptions(TRAIN)
    assert d["E1122"] == icd10.description("E1122") == "Type 2 diabetes mellitus with diabetic chronic kidney disease"
    assert d["T814XXA"] == "Infection following a procedure, initial encounter"  # retired: the data set's own words
    assert d["Z23"] == "Encounter for immunization"


def test_candidate_recall_and_where_the_answers_sit_on_the_lists():
    rows = [{"code": "A", "shortlist": [{"code": "A"}, {"code": "B"}]},
            {"code": "B", "shortlist": [{"code": "A"}, {"code": "B"}]},
            {"code": "C", "shortlist": [{"code": "A"}, {"code": "B"}]}]
    assert candidate_recall(rows) == round(2 / 3, 4)
    assert [gold_rank(r) for r in rows] == [1, 2, None]
    preds = [{"pred": "A"}, {"pred": "A"}, {"pred": "C"}]
    m = shortlist_metrics(rows, preds)
    assert m == {"candidates": 2, "candidate_recall": round(2 / 3, 4), "picked_first_candidate": round(2 / 3, 4),
                 "picked_other_candidate": 0.0, "picked_off_list": round(1 / 3, 4)}
