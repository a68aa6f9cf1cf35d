"""The one prompt builder used by evaluation, training and prediction, so they cannot drift.

Prompts are rendered only with the tokenizer's own chat template: no special token is
written by hand here. Templates that write today's date (Llama-3.x: ``strftime_now``, or
``date_string``) get TEMPLATE_DATE instead, so a prompt is the same bytes on every day: an
adapter is trained and evaluated on the same prompts, and a rerun next month changes nothing.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass

from icdstudy import icd10
from icdstudy.models.modeling import ModelError

SYSTEM = "You are a medical coder. Reply with the most specific ICD-10-CM code, with its dot, and nothing else."
INPUT_NAMES = {"dialogue": "Doctor-patient dialogue", "note": "Clinical note"}
QUESTION = "Which ICD-10-CM code fits this encounter best?"
# The shortlist block (a system with prompt: shortlist, its `retrieved` codes): ranked as the retriever ranks them, each code dotted with its
# official description and the retriever's score (its share of the nearest training encounters' votes).
CANDIDATES = "Candidate codes, ranked by similar past encounters (share of their votes):"
ELISION = " [...] "
# The fallback date of the Llama-3.1 template itself, so its prompts look as they would with no clock.
TEMPLATE_DATE = datetime.date(2024, 7, 26)


def answer_text(code: str) -> str:
    """The answer a model should give: the dotted code, as coders write it."""
    return icd10.dotted(code)


def candidate_block(candidates: list[dict]) -> str:
    """``candidates``: dicts with code, description and score, in the retriever's order."""
    lines = [f"{i}. {icd10.dotted(c['code'])} {c['description']} ({c['score']:.2f})" for i, c in enumerate(candidates, 1)]
    return "\n".join([CANDIDATES, *lines])


def user_message(text: str, input_kind: str, candidates: list[dict] | None = None) -> str:
    block = f"{candidate_block(candidates)}\n\n" if candidates else ""
    return f"{INPUT_NAMES.get(input_kind, 'Encounter')}:\n{text}\n\n{block}{QUESTION}"


def build_messages(text: str, input_kind: str, shots: list[dict] = (), candidates: list[dict] | None = None) -> list[dict]:
    """System message, optional few-shot turns (``shots`` rows with input/code), then the encounter
    with its candidate shortlist, if any."""
    messages = [{"role": "system", "content": SYSTEM}]
    for shot in shots:
        messages.append({"role": "user", "content": user_message(shot["input"], input_kind)})
        messages.append({"role": "assistant", "content": answer_text(shot["code"])})
    messages.append({"role": "user", "content": user_message(text, input_kind, candidates)})
    return messages


def chat_text(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    """The chat template's text for ``messages``, rendered on TEMPLATE_DATE whatever the clock says."""
    return tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=add_generation_prompt,
        date_string=TEMPLATE_DATE.strftime("%d %b %Y"), strftime_now=TEMPLATE_DATE.strftime)


def render(tokenizer, messages: list[dict]) -> str:
    return chat_text(tokenizer, messages, add_generation_prompt=True)


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
               shots: list[dict] = (), max_shot_tokens: int | None = None,
               candidates: list[dict] | None = None) -> tuple[str, bool]:
    """Rendered prompt text for one encounter, and whether its input was cut. Each shot's input
    is cut to ``max_shot_tokens`` (default ``max_input_tokens``), so shots cannot crowd it out.
    ``candidates`` (a shortlist) are never cut: they are short and carry the answer's options."""
    cut = truncate_tokens(tokenizer, text, max_input_tokens)
    shots = [{**s, "input": truncate_tokens(tokenizer, s["input"], max_shot_tokens or max_input_tokens).text}
             for s in shots]
    return render(tokenizer, build_messages(cut.text, input_kind, shots, candidates)), cut.was_cut


def answer_ids(tokenizer, code: str) -> list[int]:
    """Token ids of the answer as they follow a generation prompt, plus EOS."""
    return answer_ids_batch(tokenizer, [code])[0]


def answer_ids_batch(tokenizer, codes) -> list[list[int]]:
    """Token ids of each code's answer exactly as the chat template renders an assistant turn after
    its generation prompt, up to and including EOS. Mistral's template, for one, writes a space
    before the answer (``[/INST] E11.9</s>``): the answer starts with the piece ``▁E``, which a
    model has seen there, not ``E``. Training labels and the constrained-decoding trie both come
    from here, so what the model learns, what it may generate and what the template shows agree."""
    probe = [{"role": "user", "content": "x"}]
    prompt = chat_text(tokenizer, probe, add_generation_prompt=True)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    codes = list(codes)
    texts = [chat_text(tokenizer, probe + [{"role": "assistant", "content": answer_text(c)}], add_generation_prompt=False)
             for c in codes]
    eos = tokenizer.eos_token_id
    out = []
    for code, text, ids in zip(codes, texts, tokenizer(texts, add_special_tokens=False)["input_ids"]):
        if not text.startswith(prompt) or ids[:len(prompt_ids)] != prompt_ids:
            raise ModelError(
                f"the chat template of {getattr(tokenizer, 'name_or_path', 'this tokenizer')!r} renders an assistant "
                f"answer that does not continue its generation prompt ({text[len(prompt) - 20:][:60]!r} after "
                f"{prompt[-20:]!r}), so the model cannot be asked for {code} token by token; set "
                "models.<key>.chat_template to a template whose assistant turn follows its generation prompt")
        answer = ids[len(prompt_ids):]
        out.append(answer[:answer.index(eos) + 1] if eos in answer else answer + [eos])
    return out
