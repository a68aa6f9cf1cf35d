"""Training examples that teach exactly "code + EOS" after a templated prompt, and the check that they do.

Examples come from the same prompt builder as evaluation. Labels are built from lengths, not
from the pad id: the loss covers the answer (dotted code + EOS) only, and EOS stays a label even
where pad == eos (SmolLM2, Llama-3), so the model learns to stop. ``preflight`` inspects the
first collated batch for each failure of the seed study's T5 diary (labels padded instead of
masked, prompt tokens in the loss, string columns in the data, a template never applied) and
stops with one message before the first optimizer step.
"""
from __future__ import annotations

import torch  # the collator builds tensors
from datasets import Dataset

from icdstudy.inference import prompts
from icdstudy.neighbours.shortlist import SHORTLIST

IGNORE = -100
MODEL_COLUMNS = {"input_ids", "labels"}


class PreflightError(Exception):
    """Training data would teach the wrong thing; the message says what and how to fix it."""


# --- examples ---------------------------------------------------------------------------
def build_example(tokenizer, row: dict, input_kind: str, max_input_tokens: int | None,
                  loss_on_prompt: bool = False, answer: list[int] | None = None) -> dict:
    """``answer``: the code's answer ids when already known (prompts.answer_ids otherwise)."""
    prompt, _ = prompts.prompt_for(tokenizer, row["input"], input_kind, max_input_tokens,
                                   candidates=row.get(SHORTLIST))
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer = answer or prompts.answer_ids(tokenizer, row["code"])
    labels = (prompt_ids if loss_on_prompt else [IGNORE] * len(prompt_ids)) + answer
    return {"input_ids": prompt_ids + answer, "labels": list(labels)}


def build_dataset(tokenizer, rows: list[dict], input_kind: str, max_input_tokens: int | None,
                  loss_on_prompt: bool = False):
    """A datasets.Dataset holding token ids only: strings never reach the collator."""
    codes = sorted({r["code"] for r in rows})
    answers = dict(zip(codes, prompts.answer_ids_batch(tokenizer, codes)))
    return Dataset.from_list([build_example(tokenizer, r, input_kind, max_input_tokens, loss_on_prompt, answers[r["code"]])
                              for r in rows])


class CausalCollator:
    """Dynamic padding to the longest example in the batch, on the left, labels padded with -100.

    Left padding puts every answer at the end of its row, so with ``answer_logits_only`` the
    batch asks the model for logits of the last K positions only (``logits_to_keep``), K being
    the longest answer + 1, and carries the labels of those positions. The loss is the same;
    the LM head and its logits (vocab x sequence x batch floats, several GB for a 128k vocab)
    shrink to the answer. Positions before K hold prompt tokens whose labels are all -100,
    because K is measured from the first supervised token.
    """

    def __init__(self, tokenizer, answer_logits_only: bool = True):
        self.pad_id = tokenizer.pad_token_id
        self.answer_logits_only = answer_logits_only

    def __call__(self, features: list[dict]) -> dict:
        width = max(len(f["input_ids"]) for f in features)
        ids, labels, mask = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            ids.append([self.pad_id] * pad + list(f["input_ids"]))
            labels.append([IGNORE] * pad + list(f["labels"]))
            mask.append([0] * pad + [1] * len(f["input_ids"]))
        batch = {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}
        batch["position_ids"] = (batch["attention_mask"].cumsum(-1) - 1).clamp(min=0)
        if self.answer_logits_only:
            supervised = batch["labels"] != IGNORE
            first = torch.where(supervised.any(-1), supervised.int().argmax(-1), torch.tensor(width))
            keep = int(width - first.min().item() + 1)
            if keep < width:
                batch["labels"] = batch["labels"][:, width - keep:]
                batch["logits_to_keep"] = keep
        return batch


def collator(tokenizer, answer_logits_only: bool = True) -> CausalCollator:
    return CausalCollator(tokenizer, answer_logits_only)


# --- preflight --------------------------------------------------------------------------
def preflight(batch: dict, codes: list[str], tokenizer, dataset_columns, loss_on_prompt: bool = False) -> None:
    """Raise PreflightError unless the first batch teaches exactly "code + EOS" after a templated prompt."""
    strings = [c for c in dataset_columns if c not in MODEL_COLUMNS | {"attention_mask"}]
    if strings:
        raise PreflightError(f"preflight: columns {strings} would reach the collator; keep only token ids "
                             "(input_ids, labels) in the training set (T5 diary: string columns in the data)")
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is None or pad is None:
        raise PreflightError(f"preflight: tokenizer has eos_token_id={eos}, pad_token_id={pad}; both must be set")
    _check_template_eos(tokenizer)
    gen_prompt = _generation_prompt(tokenizer)
    input_ids, labels = batch["input_ids"].tolist(), batch["labels"].tolist()
    attention = batch["attention_mask"].tolist()
    for i, (ids, labs, mask, code) in enumerate(zip(input_ids, labels, attention, codes)):
        labs = [IGNORE] * (len(ids) - len(labs)) + labs  # answer-only batches carry the last K labels
        pad_labels = sorted({l for l, m in zip(labs, mask) if not m and l != IGNORE})
        if pad_labels:
            raise PreflightError(f"preflight: example {i}: padding positions carry labels {pad_labels}; pad labels "
                                 "must be -100 (T5 diary: labels padded with the pad id, the model learns padding)")
        real_ids = [t for t, m in zip(ids, mask) if m]
        real_labs = [l for l, m in zip(labs, mask) if m]
        want = prompts.answer_ids(tokenizer, code)
        n_prompt = len(real_ids) - len(want)
        supervised = [l for l in real_labs if l != IGNORE]
        if loss_on_prompt:
            supervised = supervised[-len(want):]
        elif real_labs[:n_prompt] != [IGNORE] * n_prompt:
            raise PreflightError(f"preflight: example {i}: prompt tokens are in the loss; mask them with -100 or set "
                                 "recipe.loss_on_prompt: true on purpose (T5 diary: the model echoed its input)")
        if supervised != want:
            raise PreflightError(f"preflight: example {i}: labels decode to {tokenizer.decode(supervised)!r}, expected "
                                 f"{tokenizer.decode(want)!r} (the code, then EOS)")
        prompt_text = tokenizer.decode(real_ids[:n_prompt])
        if not prompt_text.endswith(gen_prompt) or prompts.SYSTEM not in prompt_text:
            raise PreflightError(f"preflight: example {i}: the prompt was not built with the chat template "
                                 f"(it should end with {gen_prompt!r})")


def _generation_prompt(tokenizer) -> str:
    msgs = [{"role": "user", "content": "x"}]
    with_gen = prompts.chat_text(tokenizer, msgs, add_generation_prompt=True)
    without = prompts.chat_text(tokenizer, msgs, add_generation_prompt=False)
    return with_gen[len(without):]


def _check_template_eos(tokenizer) -> None:
    """The chat template must close an assistant turn with the tokenizer's EOS, or the model
    learns to stop with a token that generation does not stop on."""
    text = prompts.chat_text(tokenizer, [{"role": "user", "content": "x"}, {"role": "assistant", "content": "E11.9"}],
                             add_generation_prompt=False)
    after = text[text.rindex("E11.9") + len("E11.9"):]
    if not after.lstrip(" ").startswith(tokenizer.eos_token):
        raise PreflightError(f"preflight: the chat template ends an assistant turn with {after.strip()[:20]!r}, not the "
                             f"tokenizer's eos_token {tokenizer.eos_token!r}; set eos_token to the turn-end token")


