"""The one prompt builder used by evaluation, training and prediction, so they cannot drift.

Prompts are rendered only with the tokenizer's own chat template: no special token is
written by hand here.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import icd10

SYSTEM = "You are a medical coder. Reply with the most specific ICD-10-CM code, with its dot, and nothing else."
INPUT_NAMES = {"dialogue": "Doctor-patient dialogue", "note": "Clinical note"}
QUESTION = "Which ICD-10-CM code fits this encounter best?"
ELISION = " [...] "


def answer_text(code: str) -> str:
    """The answer a model should give: the dotted code, as coders write it."""
    return icd10.dotted(code)


def user_message(text: str, input_kind: str) -> str:
    return f"{INPUT_NAMES.get(input_kind, 'Encounter')}:\n{text}\n\n{QUESTION}"


def build_messages(text: str, input_kind: str, shots: list[dict] = ()) -> list[dict]:
    """System message, optional few-shot turns (``shots`` rows with input/code), then the encounter."""
    messages = [{"role": "system", "content": SYSTEM}]
    for shot in shots:
        messages.append({"role": "user", "content": user_message(shot["input"], input_kind)})
        messages.append({"role": "assistant", "content": answer_text(shot["code"])})
    messages.append({"role": "user", "content": user_message(text, input_kind)})
    return messages


def render(tokenizer, messages: list[dict]) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@dataclass
class Truncated:
    text: str
    was_cut: bool


def truncate_tokens(tokenizer, text: str, max_tokens: int | None) -> Truncated:
    """Cut ``text`` to ``max_tokens`` tokens, keeping the head and the tail (the assessment and
    plan usually sit at the end of a note, the chief complaint at the start)."""
    if not max_tokens:
        return Truncated(text, False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return Truncated(text, False)
    head = max_tokens // 2
    tail = max_tokens - head
    return Truncated(tokenizer.decode(ids[:head]) + ELISION + tokenizer.decode(ids[-tail:]), True)


def prompt_for(tokenizer, text: str, input_kind: str, max_input_tokens: int | None = None,
               shots: list[dict] = (), max_shot_tokens: int | None = None) -> tuple[str, bool]:
    """Rendered prompt text for one encounter, and whether its input was cut. Each shot's input
    is cut to ``max_shot_tokens`` (default ``max_input_tokens``), so shots cannot crowd it out."""
    cut = truncate_tokens(tokenizer, text, max_input_tokens)
    shots = [{**s, "input": truncate_tokens(tokenizer, s["input"], max_shot_tokens or max_input_tokens).text}
             for s in shots]
    return render(tokenizer, build_messages(cut.text, input_kind, shots)), cut.was_cut


def answer_ids(tokenizer, code: str) -> list[int]:
    """Token ids of the answer as they follow a generation prompt, plus EOS."""
    return answer_ids_batch(tokenizer, [code])[0]


def answer_ids_batch(tokenizer, codes) -> list[list[int]]:
    """Token ids of each code's answer, tokenized in context (after a rendered prompt) rather
    than alone, because SentencePiece tokenizers give a word at the start of a string a
    different piece than the same word after a prompt. Each ends with EOS."""
    probe = render(tokenizer, [{"role": "user", "content": "x"}])
    base = tokenizer(probe, add_special_tokens=False)["input_ids"]
    texts = [answer_text(c) for c in codes]
    full = tokenizer([probe + t for t in texts], add_special_tokens=False)["input_ids"]
    out = []
    for ids, text in zip(full, texts):
        if ids[:len(base)] != base:
            ids = base + tokenizer(text, add_special_tokens=False)["input_ids"]
        out.append(ids[len(base):] + [tokenizer.eos_token_id])
    return out
