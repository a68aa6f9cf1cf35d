"""Candidate shortlists: a training row never sees itself or a copy of its text, the order is knn's
and deterministic, and the prompt lists each code with its description and score."""
import random

import pytest

from icdstudy import icd10
from icdstudy.inference import prompts
from icdstudy.neighbours.retrieval import Retriever
from icdstudy.neighbours.shortlist import SHORTLIST, candidate_recall, code_descriptions, shortlist_metrics, with_shortlists

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
    by_id = {r["id"]: [c["code"] for c in r[SHORTLIST]] for r in rows}
    # Z23 and J4520 are carried only by t7 and its copy t8: neither row may be offered its own answer
    assert "Z23" not in by_id["t7"] and "J4520" not in by_id["t7"], by_id["t7"]
    assert "J4520" not in by_id["t8"] and "Z23" not in by_id["t8"], by_id["t8"]
    assert "T814XXA" not in by_id["t6"] and "E1122" not in by_id["t3"]  # single-row codes
    assert "E119" in by_id["t0"] and "E119" in by_id["t1"]  # a code with another row is still offered
    # a test row is shown the same way: a copy of a training text is never a neighbour
    test = with_shortlists(TRAIN, [{"id": "q", "code": "Z23", "input": "Here for the influenza vaccine today."}], 8, CFG)
    assert {"Z23", "J4520"}.isdisjoint(c["code"] for c in test[0][SHORTLIST])


# Rows built so that their order by similarity to QUERY is plain: t0 shares four of its words, t1 three, t2 two,
# t3 one, t4 and t5 none (ties go to the earlier row).
LADDER = [{"id": "t0", "code": "A00", "input": "alpha beta gamma delta epsilon"},
          {"id": "t1", "code": "B00", "input": "alpha beta gamma zeta"},
          {"id": "t2", "code": "A00", "input": "alpha beta eta"},
          {"id": "t3", "code": "C00", "input": "alpha theta"},
          {"id": "t4", "code": "D00", "input": "iota kappa"},
          {"id": "t5", "code": "E00", "input": "lambda mu"}]
QUERY = {"id": "q", "input": "alpha beta gamma delta"}


def test_candidates_are_knns_vote_then_the_codes_of_the_next_nearest_rows():
    r = Retriever.from_params(LADDER, CFG)
    listed = r.shortlists([QUERY], 5, 3)[0]
    # the 3 nearest rows vote: A00 (t0 + t2) before B00 (t1); then t3's C00, then t4's D00 and t5's E00
    assert [c["code"] for c in listed] == ["A00", "B00", "C00", "D00", "E00"]
    a, b = listed[0]["score"], listed[1]["score"]
    assert a > b > 0 and a + b == pytest.approx(1, abs=1e-5)  # shares of the vote
    assert [c["score"] for c in listed[2:]] == [0.0, 0.0, 0.0]
    assert [c["code"] for c in r.shortlists([QUERY], 2, 3)[0]] == ["A00", "B00"]
    assert [c["code"] for c in r.shortlists([QUERY], 3, 1)[0]] == ["A00", "B00", "C00"]  # one voter: t0, then t1, t2, t3


def test_candidate_lists_are_the_same_whatever_order_the_queries_come_in():
    r = Retriever.from_params(TRAIN, CFG)
    queries = [{"id": f"q{i}", "input": t["input"] + " again"} for i, t in enumerate(TRAIN)]
    once = _codes(r.shortlists(queries, 5, 3))
    shuffled = queries[:]
    random.Random(1).shuffle(shuffled)
    again = dict(zip([q["id"] for q in shuffled], _codes(Retriever.from_params(TRAIN, CFG).shortlists(shuffled, 5, 3))))
    assert once == [again[q["id"]] for q in queries]


def test_the_prompt_lists_each_code_dotted_with_its_description_and_score_in_order():
    listed = [{"code": "E1165", "description": "Type 2 diabetes mellitus with hyperglycemia", "score": 0.4134},
              {"code": "T814XXA", "description": "Infection following a procedure, initial encounter", "score": 0.3},
              {"code": "Z23", "description": "Encounter for immunization", "score": 0.0}]
    assert prompts.candidate_block(listed) == (
        "Candidate codes, ranked by similar past encounters (share of their votes):\n"
        "1. E11.65 Type 2 diabetes mellitus with hyperglycemia (0.41)\n"
        "2. T81.4XXA Infection following a procedure, initial encounter (0.30)\n"
        "3. Z23 Encounter for immunization (0.00)")
    text = prompts.user_message("Thirsty, glucose 380.", "dialogue", listed)
    assert text == ("Doctor-patient dialogue:\nThirsty, glucose 380.\n\n" + prompts.candidate_block(listed)
                    + "\n\nWhich ICD-10-CM code fits this encounter best?")
    assert prompts.user_message("x", "dialogue") == prompts.user_message("x", "dialogue", []) == (
        "Doctor-patient dialogue:\nx\n\nWhich ICD-10-CM code fits this encounter best?")


def test_a_retired_code_is_listed_with_the_data_sets_description():
    row = with_shortlists(TRAIN, [{"id": "q", "code": "T814XXA", "input": "Redness at the incision after surgery."}],
                          3, CFG)[0]
    first = row[SHORTLIST][0]
    assert first["code"] == "T814XXA" and first["description"] == "Infection following a procedure, initial encounter"


def test_descriptions_come_from_the_table_else_the_data_set():
    d = code_descriptions(TRAIN)
    assert d["E1122"] == icd10.description("E1122") == "Type 2 diabetes mellitus with diabetic chronic kidney disease"
    assert d["T814XXA"] == "Infection following a procedure, initial encounter"  # retired: the data set's own words
    assert d["Z23"] == "Encounter for immunization"


def test_candidate_recall_and_where_the_answers_sit_on_the_lists():
    predictions = [{"gold": "A", "pred": "A", SHORTLIST: ["A", "B"]},   # right, the first candidate
                   {"gold": "B", "pred": "A", SHORTLIST: ["A", "B"]},   # wrong, the first candidate
                   {"gold": "C", "pred": "C", SHORTLIST: ["A", "B"]},   # right, off the list
                   {"gold": "B", "pred": "B", SHORTLIST: ["A", "B"]}]   # right, the second candidate
    assert candidate_recall(predictions) == 0.75
    assert candidate_recall([{"code": "B", SHORTLIST: [{"code": "A"}, {"code": "B"}]}]) == 1.0  # a row as prompts hold it
    assert shortlist_metrics(predictions) == {"candidates": 2, "candidate_recall": 0.75, "picked_first_candidate": 0.5,
                                              "picked_other_candidate": 0.25, "picked_off_list": 0.25}
