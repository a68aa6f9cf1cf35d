"""Batched generation of ICD-10-CM codes: free text or constrained to the label set.

Constrained decoding walks a prefix trie of the labels' token ids. The logits processor masks
every token that leaves the trie and re-normalizes over the tokens that remain, so a beam's
score is the log-probability of that label under the model restricted to labels: scores of the
k returned candidates are probabilities that sum to at most 1.
"""
# torch, transformers and tqdm are imported where used: `python -m icdstudy.predict --help` and the plan load
# this module without them.
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

from icdstudy import icd10
from icdstudy.inference.prompts import answer_ids_batch

_CODE_IN_TEXT = re.compile(r"(?<![A-Za-z0-9])([A-Za-z][0-9][0-9A-Za-z](?:\.?[0-9A-Za-z]{1,4})?)(?![A-Za-z0-9])")


def parse_code(text: str) -> str | None:
    """The first ICD-10-CM-shaped code in free text, dotted or not, any case; None if none."""
    for match in _CODE_IN_TEXT.finditer(text or ""):
        code = icd10.normalize(match.group(1))
        if icd10.is_code_shaped(code) and any(ch.isdigit() for ch in code[1:3]):
            return code
    return None


class LabelTrie:
    """Prefix trie over token-id sequences (each ends with EOS)."""

    def __init__(self, sequences: dict[str, list[int]]):
        self.root: dict = {}
        self.code_of: dict[tuple[int, ...], str] = {}
        for code, ids in sequences.items():
            node = self.root
            for tok in ids:
                node = node.setdefault(tok, {})
            self.code_of[tuple(ids)] = code

    def allowed(self, prefix: list[int]) -> list[int]:
        node = self.root
        for tok in prefix:
            node = node.get(tok)
            if node is None:
                return []
        return list(node)

    def code_for(self, ids: list[int], eos_id: int) -> str | None:
        ids = list(ids)
        if eos_id in ids:
            ids = ids[:ids.index(eos_id) + 1]
        return self.code_of.get(tuple(ids))


def build_trie(tokenizer, codes) -> LabelTrie:
    codes = list(codes)
    return LabelTrie(dict(zip(codes, answer_ids_batch(tokenizer, codes))))


class TrieLogitsProcessor:
    """Masks tokens outside the label trie and re-normalizes (log-softmax) over the rest.

    Per step it reads only the generated tokens of each beam (a few ints, not the prompt), looks up
    the tokens the trie allows after them (memoized per prefix), gathers those tokens' scores,
    subtracts their log-sum-exp, fills the scores with -inf and scatters the renormalized values back:
    one write over the vocabulary-sized scores, in place (generate hands every processor a fresh
    tensor: a copy of the logits, or the log-softmax it just computed; a new 128k-wide tensor per
    step cost as much as a log-softmax again). Masking row by row with a Python list of every beam's
    whole sequence and a full log-softmax took three passes and the loop (benchmarks/run.py --only
    constrained)."""

    def __init__(self, trie: LabelTrie, prompt_len: int, eos_id: int):
        self.trie, self.prompt_len, self.eos_id = trie, prompt_len, eos_id
        self._allowed: dict[tuple[int, ...], list[int]] = {}

    def allowed(self, generated: tuple[int, ...]) -> list[int]:
        """The tokens that may follow ``generated``: the trie's, only EOS once EOS was generated or where
        the sequence left the trie."""
        found = self._allowed.get(generated)
        if found is None:
            found = [self.eos_id] if self.eos_id in generated else (self.trie.allowed(list(generated)) or [self.eos_id])
            self._allowed[generated] = found
        return found

    def __call__(self, input_ids, scores):
        import torch

        allowed = [self.allowed(tuple(p)) for p in input_ids[:, self.prompt_len:].tolist()]
        width = max(map(len, allowed))
        # each row padded with its first allowed token: a duplicate, left out of the sum, rewritten with the same value
        ids = torch.tensor([a + a[:1] * (width - len(a)) for a in allowed], device=scores.device)
        real = torch.tensor([[True] * len(a) + [False] * (width - len(a)) for a in allowed], device=scores.device)
        picked = scores.gather(1, ids)
        norm = torch.logsumexp(picked.masked_fill(~real, float("-inf")), dim=1, keepdim=True)
        return scores.fill_(float("-inf")).scatter_(1, ids, picked - norm)


@dataclass
class GenerationSettings:
    """A system's decoding: params `decoding` (their defaults live there and in its schema, nowhere else), its own
    `decoding` keys, and what its prompt style sets (``few_shot``: the nearest training examples shown)."""
    batch_size: int
    max_new_tokens: int
    constrained: bool
    top_k: int
    num_beams: int | None
    max_input_tokens: int | None
    max_shot_tokens: int | None  # each shown example is cut to this (None = max_input_tokens)
    seed: int
    repetition_penalty: float
    few_shot: int = 0  # set by the prompt style (`prompt: examples`), not a params key
    share_prefill: bool = True  # beam search reads each prompt once, not num_beams times (benchmarks turn it off)

    @classmethod
    def from_params(cls, section: dict) -> "GenerationSettings":
        known = {k: section[k] for k in cls.__dataclass_fields__ if k in section}
        return cls(**known)


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar length (longest first, so memory peaks early)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def _logp_until_eos(token_logps: list[float], tokens: list[int], eos: int) -> float:
    total = 0.0
    for logp, tok in zip(token_logps, tokens):
        total += logp
        if tok == eos:
            break
    return total


def prefill_once(model, enc, copies: int):
    """KV cache of every prompt but its last token, computed once and repeated ``copies`` times.

    ``generate`` with beam search copies each prompt num_beams times before its first forward
    pass, so a 700-token note is read five times for top-5 beams. Handing it this cache leaves
    it only the last prompt token per beam to compute. Positions follow the attention mask, as
    in ``generate``, so left padding gives the same rotary positions.
    """
    from transformers import DynamicCache

    ids, mask = enc["input_ids"], enc["attention_mask"]
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    cache = DynamicCache(config=model.config)
    model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions[:, :-1], past_key_values=cache,
          use_cache=True, logits_to_keep=1)
    cache.batch_repeat_interleave(copies)
    return cache


def decode(model, enc: dict, settings: GenerationSettings, trie: LabelTrie | None, eos_id: int, pad_id: int):
    """Generation over one left-padded, tokenized batch: (new token ids per returned sequence, their
    log-probabilities). With k = top_k candidates per prompt, rows i*k .. i*k+k-1 belong to prompt i."""
    import torch

    prompt_len = enc["input_ids"].shape[1]
    k = max(1, settings.top_k) if settings.constrained else 1
    beams = settings.num_beams or k
    common = dict(max_new_tokens=settings.max_new_tokens, pad_token_id=pad_id, eos_token_id=eos_id,
                  return_dict_in_generate=True, output_scores=True, do_sample=False,
                  repetition_penalty=settings.repetition_penalty)
    if settings.constrained:
        common["logits_processor"] = [TrieLogitsProcessor(trie, prompt_len, eos_id)]
    if beams > 1:
        # length_penalty 0: scores stay plain log-probabilities. early_stopping False: with True, beam
        # search may stop with fewer than k finished labels and pad the rest with -1e9.
        common.update(num_beams=beams, num_return_sequences=k, length_penalty=0.0, early_stopping=False)
    with torch.inference_mode():
        if beams > 1 and settings.share_prefill:
            common["past_key_values"] = prefill_once(model, enc, beams)
        out = model.generate(**enc, **common)
    seqs = out.sequences[:, prompt_len:].tolist()
    if beams > 1:
        seq_logp = out.sequences_scores.tolist()
    else:
        trans = model.compute_transition_scores(out.sequences, out.scores, normalize_logits=True)
        seq_logp = [_logp_until_eos(row, seq, eos_id) for row, seq in zip(trans.tolist(), seqs)]
    return seqs, seq_logp


def generate_batch(model, tokenizer, prompts: list[str], settings: GenerationSettings,
                   trie: LabelTrie | None, label_set: frozenset[str]) -> list[dict]:
    """One left-padded batch -> one result per prompt: raw text, parsed code, ranked candidates."""
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    eos = tokenizer.eos_token_id
    k = max(1, settings.top_k) if settings.constrained else 1
    seqs, seq_logp = decode(model, enc, settings, trie, eos, tokenizer.pad_token_id)
    results = []
    for i in range(len(prompts)):
        rows = range(i * k, (i + 1) * k)
        raw = tokenizer.decode(seqs[i * k], skip_special_tokens=True).strip()
        candidates = []
        if settings.constrained:
            for r in rows:
                code = trie.code_for(seqs[r], eos)
                if code and code not in {c["code"] for c in candidates} and math.isfinite(seq_logp[r]):
                    candidates.append({"code": code, "score": round(math.exp(seq_logp[r]), 6)})
            candidates.sort(key=lambda c: -c["score"])
            parsed = candidates[0]["code"] if candidates else None
        else:
            parsed = parse_code(raw)
        results.append({
            "raw": raw,
            "pred": parsed,
            "valid": bool(parsed) and (icd10.is_valid(parsed) or parsed in label_set),
            "candidates": candidates if settings.constrained and settings.top_k > 1 else None,
            "confidence": candidates[0]["score"] if settings.constrained and candidates else None,
        })
    return results


def run_generation(model, tokenizer, prompts: list[str], settings: GenerationSettings, label_codes,
                   done: set[int] = frozenset(), on_batch=None, progress: bool = True) -> None:
    """Generate for every prompt not in ``done``, calling ``on_batch(indices, results, seconds)``.

    Batches are formed over all prompts first, so a resumed run skips finished batches and
    computes the remaining ones exactly as an uninterrupted run would.
    """
    from tqdm.auto import tqdm

    label_set = frozenset(label_codes)
    trie = build_trie(tokenizer, sorted(label_set)) if settings.constrained else None
    lengths = [len(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    batches = length_sorted_batches(lengths, settings.batch_size)
    todo = [b for b in batches if not set(b) <= set(done)]
    bar = tqdm(total=len(prompts), initial=len(prompts) - sum(len(b) for b in todo), desc="generate",
               unit="sample", disable=not progress, mininterval=2.0)
    for batch in todo:
        t0 = time.perf_counter()
        results = generate_batch(model, tokenizer, [prompts[i] for i in batch], settings, trie, label_set)
        if on_batch:
            on_batch(batch, results, time.perf_counter() - t0)
        bar.update(len(batch))
    bar.close()
