"""Speed of the study's training and evaluation against the naive way, on this machine.

    python benchmarks/run.py            # about 8 minutes on 2 CPU cores; uses CUDA when present
    python benchmarks/run.py --quick    # smoke run (CI): tiny sizes, the ratios mean nothing

Each ratio compares two ways of doing the same work on the same inputs, each timed --repeats
times after a warm-up, medians compared:

  train_padding_speedup  useful (non-pad) training tokens/s. Ours: the pipeline's collator
                         (dynamic left padding, logits only at answer positions), length-grouped
                         batches, recipe.lora_dropout. Naive (the seed notebooks): every example
                         padded to 512 tokens, logits at every position, LoRA dropout 0.1.
                         Same model, precision, LoRA rank, batch size, examples (capped to fit 512).
  eval_batching_speedup  test samples/s. Ours: run_generation with the params' eval settings
                         (length-sorted batches, each prompt read once per beam group). Naive:
                         model.generate one sample at a time with the same decoding.
  constrained_overhead   seconds of greedy decoding constrained to the label trie over
                         unconstrained greedy decoding (one candidate each).
  constrained_overhead_full_shapes
                         (--only constrained) seconds per decoding step (the median gap between two
                         steps) of constrained beam search over free beam search on the same prompts,
                         at the full study's shapes: a
                         2-layer random Llama with Llama-3's real 128k vocabulary (a GPU's forward
                         pass is cheap beside the logits, as this one's is), 48 prompts x 1,536
                         tokens, 5 beams, 2,037 real ICD-10-CM codes through Llama-3's real tokenizer.
                         Per step, so constrained decoding's earlier stop hides nothing. Also timed:
                         the naive processor (every beam's whole sequence as a Python list, the mask
                         written row by row, a full log-softmax) that this one replaced.
  noop_repro_s           seconds of `dvc repro` when every stage is up to date.

Inputs are MedSynth notes (the shared sample by default), so lengths are the real ones. Writes
benchmarks/results/summary.json and summary.md (atomically) and prints the table.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from icdstudy.inference import prompts  # noqa: E402
from icdstudy.core.io import write_json, write_text_atomic  # noqa: E402
from icdstudy.core.params import load_params, section  # noqa: E402
from icdstudy.planning.plan import GPUS  # noqa: E402

NOTEBOOK_MAX_LENGTH = 512  # the seed config's max_sequence_length, with padding="max_length"
NOTEBOOK_LORA_DROPOUT = 0.1
TARGETS = {"train_padding_speedup": (">=", 2.0), "eval_batching_speedup": (">=", 3.0),
           "constrained_overhead": ("<=", 1.5), "constrained_overhead_full_shapes": ("<=", 1.2), "noop_repro_s": ("<", 3.0)}
FULL_SHAPES = {"prompts": 48, "prompt_tokens": 1536, "beams": 5, "codes": 2037, "new_tokens": 12}


def timed(fn, repeats: int, warm_up: bool = True) -> list[float]:
    """Seconds of ``repeats`` calls of ``fn``, after one untimed warm-up call unless told otherwise."""
    if warm_up:
        fn()
    out = []
    for _ in range(repeats):
        _sync()
        t0 = time.perf_counter()
        fn()
        _sync()
        out.append(time.perf_counter() - t0)
    return out


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


# --- inputs -----------------------------------------------------------------------------
def load_rows(source: str, input_kind: str, n: int) -> list[dict]:
    """Every usable row of ``source`` (at least ``n``), cleaned as the prepare stage cleans them."""
    from icdstudy.corpus.data import canonicalize, clean, load_source

    cleaned = clean(canonicalize(load_source(source), input_kind, source), input_kind)
    rows = [{"id": r["id"], "code": r["code"], "input": r["input"]} for r in cleaned.rows]
    if len(rows) < n:
        raise SystemExit(f"benchmarks: {source} has {len(rows)} usable rows, {n} needed; lower --samples")
    return rows


def capped_examples(tokenizer, rows, input_kind: str, max_length: int) -> list[dict]:
    """Training examples cut (input head and tail, as the pipeline cuts) to fit ``max_length`` tokens,
    so both collations train on exactly the same tokens."""
    from icdstudy.finetune.examples import build_example

    overhead = len(build_example(tokenizer, {"input": "", "code": "Z00.00"}, input_kind, None)["input_ids"]) + 8
    examples = [build_example(tokenizer, r, input_kind, max_length - overhead) for r in rows]
    assert all(len(e["input_ids"]) <= max_length for e in examples)
    return examples


# --- training ---------------------------------------------------------------------------
def train_tokens_per_s(model_dir, entry, examples, batches, collate, cfg, lora_dropout, repeats) -> dict:
    import torch
    from peft import LoraConfig, get_peft_model

    from icdstudy.core.machine import peak_memory_mb
    from icdstudy.models.modeling import load_model, resolve_dtype

    cuda = torch.cuda.is_available()
    torch.manual_seed(0)
    model = load_model(model_dir, entry, dtype=None if cuda else torch.float32)  # as fine_tune loads it
    model = get_peft_model(model, LoraConfig(r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], lora_dropout=lora_dropout,
                                             target_modules=list(cfg["target_modules"]), task_type="CAUSAL_LM"))
    model.train()
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    bf16 = resolve_dtype(entry.get("dtype", "auto")) == torch.bfloat16
    device = "cuda" if cuda else "cpu"
    collated = [collate([examples[i] for i in b]) for b in batches]
    useful = sum(int(b["attention_mask"].sum()) for b in collated)
    slots = sum(b["attention_mask"].numel() for b in collated)

    from icdstudy.planning.measure import train_step

    def epoch():
        for batch in collated:
            train_step(model, {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}, optim, device, bf16)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    seconds = timed(epoch, repeats)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    # Matmul FLOPs per token: forward 2N, backward input-gradients 2N, weight gradients for the
    # adapter only (frozen weights get none); attention scores are left out, so this undercounts.
    flops_per_token = 4 * (frozen + trainable) + 2 * trainable
    tps = useful / statistics.median(seconds)
    # dense bf16 peaks of known GPUs (the plan's table); other devices get achieved FLOP/s only
    peak = next((flops for name, (flops, _) in GPUS.items() if cuda and name in torch.cuda.get_device_name()), None)

    return {"tokens_per_s": round(tps, 1), "seconds": [round(s, 2) for s in seconds], "useful_tokens": useful,
            "padded_slots": slots, "padding_fraction": round(1 - useful / slots, 3), "bf16": bf16,
            "achieved_tflops": round(tps * flops_per_token / 1e12, 3),
            "mfu": round(tps * flops_per_token / peak, 4) if peak else None,
            "peak_mem_mb": peak_memory_mb() if cuda else None}  # CPU: only a process-wide peak exists


def bench_train(args, entry, tokenizer, rows, cfg) -> dict:
    from transformers import DataCollatorForSeq2Seq
    from transformers.trainer_pt_utils import LengthGroupedSampler

    from icdstudy.finetune.examples import IGNORE, collator

    examples = capped_examples(tokenizer, rows, args.input, NOTEBOOK_MAX_LENGTH)
    bs = cfg["batch_size"]
    lengths = [len(e["input_ids"]) for e in examples]
    grouped = list(LengthGroupedSampler(bs, lengths=lengths, generator=_generator()))  # what Trainer's group_by_length does
    in_order = list(range(len(examples)))
    chunk = lambda order: [order[i:i + bs] for i in range(0, len(order), bs)]  # noqa: E731
    naive_collate = DataCollatorForSeq2Seq(tokenizer, padding="max_length", max_length=NOTEBOOK_MAX_LENGTH,
                                           label_pad_token_id=IGNORE, return_tensors="pt")
    naive_examples = [{**e, "attention_mask": [1] * len(e["input_ids"])} for e in examples]
    print(f"train: {len(examples)} examples, batch {bs}, {args.repeats} timed epochs each way")
    ours = train_tokens_per_s(args.model, entry, examples, chunk(grouped), collator(tokenizer), cfg,
                              cfg["lora_dropout"], args.repeats)
    naive = train_tokens_per_s(args.model, entry, naive_examples, chunk(in_order), naive_collate, cfg,
                               NOTEBOOK_LORA_DROPOUT, args.repeats)
    return {"ours": ours, "naive": naive, "ratio": round(ours["tokens_per_s"] / naive["tokens_per_s"], 2),
            "examples": len(examples), "median_example_tokens": statistics.median(lengths)}


def _generator():
    import torch

    return torch.Generator().manual_seed(0)


# --- evaluation -------------------------------------------------------------------------
def bench_eval(args, model, tokenizer, rows, eval_cfg) -> dict:
    from dataclasses import replace

    from icdstudy.inference.generation import GenerationSettings, build_trie, generate_batch, run_generation

    settings = GenerationSettings.from_params(eval_cfg)
    texts = [prompts.prompt_for(tokenizer, r["input"], args.input, settings.max_input_tokens)[0] for r in rows]
    labels = sorted(set(args.label_codes))
    n = len(texts)
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    print(f"eval: {n} prompts (median {statistics.median(lengths):.0f} tokens), {len(labels)} labels, "
          f"top_k {settings.top_k}, batch {settings.batch_size}")

    def ours(s=settings):
        run_generation(model, tokenizer, texts, s, labels, progress=False)

    one = replace(settings, batch_size=1, share_prefill=False)
    trie, label_set = build_trie(tokenizer, labels), frozenset(labels)

    def naive():  # the notebooks' loop: one prompt per generate call
        for text in texts:
            generate_batch(model, tokenizer, [text], one, trie, label_set)

    t_ours = timed(ours, args.repeats)  # also warms the model up for the runs below
    t_naive = timed(naive, max(1, args.repeats - 1), warm_up=False)
    # How much of the gain is batching and how much reading each prompt once per beam group:
    t_no_share = timed(lambda: ours(replace(settings, share_prefill=False)), 1, warm_up=False)
    greedy = replace(settings, top_k=1, num_beams=1)
    t_con = timed(lambda: ours(replace(greedy, constrained=True)), args.repeats, warm_up=False)
    t_free = timed(lambda: ours(replace(greedy, constrained=False)), args.repeats, warm_up=False)
    med = statistics.median
    return {
        "batching": {"ours_samples_per_s": round(n / med(t_ours), 3), "naive_samples_per_s": round(n / med(t_naive), 3),
                     "ours_seconds": _r(t_ours), "naive_seconds": _r(t_naive),
                     "ratio": round(med(t_naive) / med(t_ours), 2),
                     "batched_without_shared_prefill_samples_per_s": round(n / med(t_no_share), 3)},
        "constrained": {"constrained_seconds": _r(t_con), "free_seconds": _r(t_free),
                        "ratio": round(med(t_con) / med(t_free), 2)},
        "samples": n, "median_prompt_tokens": statistics.median(lengths), "labels": len(labels),
        "settings": {"top_k": settings.top_k, "batch_size": settings.batch_size,
                     "max_new_tokens": settings.max_new_tokens},
    }


def _r(seconds):
    return [round(s, 2) for s in seconds]


# --- constrained decoding at the full study's shapes ---------------------------------------------
class RowByRowTrieProcessor:
    """The naive way (this project's processor until it was replaced): every beam's whole sequence, prompt
    included, to a Python list, the mask written row by row, then a full log-softmax."""

    def __init__(self, trie, prompt_len: int, eos_id: int):
        self.trie, self.prompt_len, self.eos_id = trie, prompt_len, eos_id

    def __call__(self, input_ids, scores):
        import torch

        mask = torch.full_like(scores, float("-inf"))
        for row, seq in enumerate(input_ids.tolist()):
            generated = seq[self.prompt_len:]
            allowed = self.trie.allowed(generated) if self.eos_id not in generated else [self.eos_id]
            mask[row, allowed or [self.eos_id]] = 0.0
        return torch.log_softmax(scores + mask, dim=-1)


def code_trie(shapes: dict, vocab: int):
    """The trie of ``codes`` real billable ICD-10-CM codes (a seeded draw) as Llama-3's tokenizer writes their
    answers; a random trie of the same size where that tokenizer is not installed."""
    import random

    from icdstudy import icd10
    from icdstudy.inference.generation import build_trie
    from icdstudy.planning.measure import random_label_trie

    codes = random.Random(0).sample(sorted(icd10.billable_codes()), shapes["codes"])
    try:
        from tests.family_models import load_family_tokenizer

        import tempfile

        tok = load_family_tokenizer("llama", Path(tempfile.mkdtemp()))
        trie = build_trie(tok, codes)
        if max(max(ids) for ids in trie.code_of) < vocab:
            return trie, tok.eos_token_id, "Llama-3 tokenizer"
    except Exception:  # noqa: BLE001 (a missing tokenizer package is one of several reasons)
        pass
    trie, eos = random_label_trie(vocab, shapes["codes"], length=5)
    return trie, eos, "random 5-token labels"


def bench_constrained_full(args) -> dict:
    import torch

    from icdstudy.planning.architectures import PUBLIC_CONFIGS
    from icdstudy.inference.generation import TrieLogitsProcessor, prefill_once
    from icdstudy.planning.measure import build_model, scaled_down, synthetic_prompts

    shapes = dict(FULL_SHAPES)
    if args.quick:
        shapes.update(prompts=4, prompt_tokens=64, codes=200)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    arch = scaled_down(PUBLIC_CONFIGS["meta-llama/Llama-3.1-8B-Instruct"], hidden=256, layers=2, vocab=128256)
    model = build_model(arch, torch.bfloat16, device, None)
    model.eval()
    trie, eos, labels = code_trie(shapes, arch.vocab)
    enc = {k: v.to(device) for k, v in synthetic_prompts(arch.vocab, shapes["prompts"], shapes["prompt_tokens"]).items()}
    prompt_len, beams = enc["input_ids"].shape[1], shapes["beams"]
    print(f"constrained: {shapes['prompts']} prompts x {prompt_len} tokens, {beams} beams, {shapes['codes']} codes "
          f"({labels}), vocab {arch.vocab}, on {device}")

    class StepClock:
        """Last in the processor list: the moment each decoding step reaches it. The median gap between two is the
        steady per-step time, without generate's setup and finish (which fewer steps would otherwise carry)."""

        def __init__(self):
            self.times = []

        def __call__(self, input_ids, scores):
            _sync()
            self.times.append(time.perf_counter())
            return scores

    def per_step(processor) -> float:
        cache = prefill_once(model, enc, beams)  # not timed: the same for every way
        clock = StepClock()
        with torch.inference_mode():
            model.generate(**enc, past_key_values=cache, max_new_tokens=shapes["new_tokens"], num_beams=beams,
                           num_return_sequences=beams, length_penalty=0.0, early_stopping=False, do_sample=False,
                           pad_token_id=0, eos_token_id=eos, return_dict_in_generate=True, output_scores=True,
                           logits_processor=([processor(prompt_len)] if processor else []) + [clock])
        gaps = [b - a for a, b in zip(clock.times, clock.times[1:])]
        return statistics.median(gaps)

    ways = {"free": None, "constrained": lambda n: TrieLogitsProcessor(trie, n, eos),
            "naive_constrained": lambda n: RowByRowTrieProcessor(trie, n, eos)}
    per_step(ways["constrained"])  # warm-up: allocator, kernels
    times = {name: [per_step(fn) for _ in range(args.repeats)] for name, fn in ways.items()}
    med = {name: statistics.median(t) for name, t in times.items()}
    return {"seconds_per_step": {k: round(v, 4) for k, v in med.items()}, "runs": {k: _r(v) for k, v in times.items()},
            "ratio": round(med["constrained"] / med["free"], 3),
            "naive_ratio": round(med["naive_constrained"] / med["free"], 3),
            "speedup_over_naive": round(med["naive_constrained"] / med["constrained"], 2),
            "shapes": shapes, "labels": labels, "architecture": f"{arch.layers} layers x {arch.hidden} hidden, vocab {arch.vocab}"}


# --- dvc --------------------------------------------------------------------------------
def bench_noop_repro(repo: Path, repeats: int) -> dict:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    dvc = [sys.executable, "-m", "dvc"]
    status = subprocess.run(dvc + ["status", "--quiet"], cwd=repo, env=env, capture_output=True, text=True)
    if status.returncode != 0:
        return {"seconds": None, "skipped": f"pipeline in {repo} is not up to date: run `dvc repro` first"}

    def repro():
        subprocess.run(dvc + ["repro"], cwd=repo, env=env, check=True, capture_output=True)

    seconds = timed(repro, repeats)
    return {"seconds": round(statistics.median(seconds), 2), "runs": _r(seconds)}


# --- report -----------------------------------------------------------------------------
def machine() -> dict:
    import torch

    from icdstudy.models.modeling import cpu_has_native_bf16

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                   if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "cpu_native_bf16": cpu_has_native_bf16(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "torch": torch.__version__, "python": platform.python_version()}


def verdicts(summary: dict) -> dict:
    out = {}
    for key, (op, target) in TARGETS.items():
        value = summary.get(key)
        out[key] = None if value is None else {">=": value >= target, "<=": value <= target, "<": value < target}[op]
    return out


def table(summary: dict) -> str:
    d = summary["details"]
    tr, ev = d.get("train"), d.get("eval")
    rows = [("metric", "ours", "naive", "value", "target", "met")]
    if tr:
        rows.append(("train_padding_speedup", f"{tr['ours']['tokens_per_s']:.0f} tok/s",
                     f"{tr['naive']['tokens_per_s']:.0f} tok/s", f"{tr['ratio']:.2f}x"))
    if ev:
        b, c = ev["batching"], ev["constrained"]
        rows.append(("eval_batching_speedup", f"{b['ours_samples_per_s']:.2f} samples/s",
                     f"{b['naive_samples_per_s']:.2f} samples/s", f"{b['ratio']:.2f}x"))
        rows.append(("constrained_overhead", f"{statistics.median(c['constrained_seconds']):.1f} s",
                     f"{statistics.median(c['free_seconds']):.1f} s (free)", f"{c['ratio']:.2f}x"))
    full = d.get("constrained_full")
    if full:
        per = full["seconds_per_step"]
        rows.append(("constrained_overhead_full_shapes", f"{per['constrained']:.3f} s/step",
                     f"{per['free']:.3f} s/step (free)", f"{full['ratio']:.2f}x"))
    noop = d.get("noop_repro", {})
    rows.append(("noop_repro_s", f"{noop.get('seconds')} s" if noop.get("seconds") is not None else noop.get("skipped", "-"),
                 "", f"{noop.get('seconds')}"))
    met = summary["met"]
    rows = [rows[0]] + [r + (" ".join(map(str, TARGETS[r[0]])), {True: "yes", False: "NO", None: "-"}[met[r[0]]])
                        for r in rows[1:]]
    widths = [max(len(str(r[i])) for r in rows) for i in range(6)]
    lines = ["| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    if ev:
        lines.append(f"\nBatched but re-reading each prompt per beam (share_prefill off): "
                     f"{ev['batching']['batched_without_shared_prefill_samples_per_s']:.2f} samples/s.")
    if full:
        lines.append(f"\nConstrained decoding at the full study's shapes, the naive processor it replaced: "
                     f"{full['seconds_per_step']['naive_constrained']:.3f} s/step ({full['naive_ratio']:.2f}x free; "
                     f"{full['speedup_over_naive']:.2f}x slower than now).")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="models/base/smollm2-135m", help="HF model folder (make demo puts it there)")
    parser.add_argument("--model-key", default="smollm2-135m", help="its entry under models: in params.yaml")
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "medsynth_sample.csv"),
                        help="MedSynth rows (CSV/Parquet/JSONL in any MedSynth schema)")
    parser.add_argument("--input", default="note", choices=["note", "dialogue"])
    parser.add_argument("--params", default=str(REPO / "params.yaml"))
    parser.add_argument("--samples", type=int, default=16, help="test prompts for the evaluation benchmarks")
    parser.add_argument("--train-examples", type=int, default=12, help="examples per timed training epoch")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (after one warm-up)")
    parser.add_argument("--repo", default=str(REPO), help="DVC project whose no-op `dvc repro` is timed")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 samples, 1 repeat, 64-token inputs")
    parser.add_argument("--only", nargs="+", choices=["train", "eval", "constrained", "repro"],
                        default=["train", "eval", "repro"],
                        help="measurements to run (constrained: the full-shape constrained decoding benchmark, "
                             "about 5 minutes on 2 CPU cores; not in the default set)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    from icdstudy.core.machine import peak_memory_mb
    from icdstudy.models.modeling import load_for_inference, load_tokenizer
    from icdstudy.core.params import model_entry

    details = {}
    if "constrained" in args.only:
        details["constrained_full"] = bench_constrained_full(args)
    params = load_params(args.params)
    entry = model_entry(params, args.model_key)
    train_cfg, eval_cfg = dict(section(params, "recipe")), dict(section(params, "decoding"))
    if args.quick:
        args.samples, args.train_examples, args.repeats = 4, 4, 1
        eval_cfg.update(max_input_tokens=64, batch_size=2, top_k=2, max_new_tokens=4)
        train_cfg.update(batch_size=2)
    needs_model = {"train", "eval"} & set(args.only)
    if needs_model and not Path(args.model).exists():
        raise SystemExit(f"benchmarks: no model at {args.model}; run `make demo` (or `dvc repro base@smollm2-135m`) "
                         "or pass --model")
    if needs_model:
        tokenizer = load_tokenizer(args.model, entry)
        rows = load_rows(args.data, args.input, max(args.samples, args.train_examples))
        args.label_codes = [r["code"] for r in rows]  # constrained decoding over every code in the data
    if "train" in args.only:
        details["train"] = bench_train(args, entry, tokenizer, rows[:args.train_examples], train_cfg)
    if "eval" in args.only:
        _, model = load_for_inference(args.model, entry)
        details["eval"] = bench_eval(args, model, tokenizer, rows[:args.samples], eval_cfg)
        del model
    if "repro" in args.only:
        details["noop_repro"] = bench_noop_repro(Path(args.repo), 1 if args.quick else args.repeats)
    out = Path(args.out)
    previous = out / "summary.json"
    if previous.exists() and not args.quick:  # measurements not rerun keep their last values (and their machine)
        import json

        kept = json.loads(previous.read_text()).get("details", {})
        details = {**{k: v for k, v in kept.items() if k not in details}, **details}
    summary = {
        "train_padding_speedup": details.get("train", {}).get("ratio"),
        "eval_batching_speedup": details.get("eval", {}).get("batching", {}).get("ratio"),
        "constrained_overhead": details.get("eval", {}).get("constrained", {}).get("ratio"),
        "constrained_overhead_full_shapes": details.get("constrained_full", {}).get("ratio"),
        "noop_repro_s": details.get("noop_repro", {}).get("seconds"),
        "quick": args.quick,
        "process_peak_mem_mb": peak_memory_mb(),
        "machine": machine(),
        "inputs": {"data": Path(args.data).name, "input": args.input, "model": args.model_key},
        "details": details,
    }
    summary["met"] = verdicts(summary)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "summary.json", summary)
    text = table(summary)
    m = summary["machine"]
    write_text_atomic(out / "summary.md", f"{text}\n\nMachine: {m['gpu'] or m['cpu']} ({m['cores']} cores), "
                                          f"torch {m['torch']}; inputs: {args.data and Path(args.data).name}.\n")
    print(text)
    print(f"benchmarks: wrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
