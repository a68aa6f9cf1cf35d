"""Memory, compute and time of every GPU stage the params select, before any GPU hour is spent.

The estimates are arithmetic over the architecture (icdstudy.planning.architectures), the params and the
data's token lengths:

- weights: 2 bytes per parameter in bf16; NF4 4-bit linear layers 0.516 bytes (4 bits plus
  double-quantized absmax), embeddings and LM head in bf16 (fp32 when QLoRA-trained, as
  prepare_model_for_kbit_training upcasts them);
- LoRA: r x (in + out) per adapted projection, fp32 weight + gradient + AdamW moments = 16 bytes;
- activations: bytes autograd saves per token per decoder layer, measured on the training path
  the GPU runs (bf16 weights under bf16 autocast, LoRA on all 7 projections, SDPA attention) by
  summing saved tensors (icdstudy.planning.measure.saved_activation_bytes) and fitted over hidden,
  intermediate and KV widths; gradient checkpointing keeps only each layer's bf16 input and
  recomputes one layer at a time. tests/test_plan.py holds the model to a measured run;
- evaluation: weights + the larger of two phases (eval_phases): reading the prompts (their cache,
  one layer's tensors, the padding mask, the grouped-query repeat_kv copy) and decoding (the KV
  cache, batch x beams x tokens x 2 x layers x KV width x 2 bytes, plus one layer's copy, the
  repeat_kv copy at beam width, the step's logits and every step's kept scores);
- time: FLOPs (4 x matmul params per trained token, + 2 with checkpointing, + 6 x LoRA params,
  + attention) at an assumed MFU of the GPU's dense bf16 peak; decoding is bandwidth-bound
  (weights + KV cache read per step) plus a fixed per-step overhead for the label trie.

A stage fits when its predicted peak plus CUDA_OVERHEAD_GB stays within (1 - margin) of the GPU.
"""
# torch and transformers are imported where used: `study plan` needs neither GPU nor their import time.
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from icdstudy import systems
from icdstudy.planning.architectures import Architecture

# Bytes autograd keeps per token per decoder layer (bf16 weights, bf16 autocast, LoRA on all 7
# projections), from saved-tensor accounting on CPU: see the module docstring.
ACT_PER_HIDDEN = 25.2
ACT_PER_INTERMEDIATE = 8.4
ACT_PER_KV = 4.25
ACT_CONST = 224.0
DROPOUT_PER_HIDDEN = 24.0  # LoRA dropout keeps a dropped copy of each adapted input
DROPOUT_PER_INTERMEDIATE = 4.0
CHECKPOINT_PER_HIDDEN = 2.0  # gradient checkpointing: the layer input only (bf16)
NF4_BYTES_PER_PARAM = 0.516
CUDA_OVERHEAD_GB = 1.5  # CUDA context, cuBLAS workspace, allocator slack
PROMPT_OVERHEAD_TOKENS = 90  # system message, chat template and question around the input
ANSWER_TOKENS = 8  # dotted code + EOS
ANSWER_LOGIT_POSITIONS = 10  # logits_to_keep: the longest answer + 1
LOGIT_FP32_COPIES = 4  # per decode step: float32 upcast, log-softmax, trie mask + masked scores, beam scores
CHARS_PER_TOKEN = 4.0  # English clinical text with 32k-152k vocabularies (MedSynth sample: 3.9-4.3)
DECODE_BANDWIDTH_EFFICIENCY = 0.6
DECODE_STEP_OVERHEAD_S = 0.03  # trie masking and beam bookkeeping per generation step
DOWNLOAD_MB_PER_S = 100.0
DEFAULT_MFU = 0.35
DEFAULT_MARGIN = 0.10

# Dense bf16 tensor-core peak FLOP/s and memory bandwidth (bytes/s) by device name fragment.
GPUS = {"H200": (989e12, 4.8e12), "H100": (989e12, 3.35e12), "A100": (312e12, 2.0e12),
        "L40S": (362e12, 0.864e12), "L4": (121e12, 0.3e12), "A10": (125e12, 0.6e12)}
# What the planner assumes about MedSynth when data/processed was not prepared with these params.
MEDSYNTH = {"rows": 10240, "mean_input_tokens": {"dialogue": 930, "note": 700}}


@dataclass
class DataStats:
    train: int
    val: int
    test: int
    mean_input_tokens: float
    max_input_tokens: int | None  # longest input seen; None = unknown (assume decoding.max_input_tokens)
    source: str
    calibration: int = 0


@dataclass
class Hardware:
    name: str
    mem_gb: float
    flops: float
    bandwidth: float
    mfu: float = DEFAULT_MFU
    margin: float = DEFAULT_MARGIN

    @property
    def budget_gb(self) -> float:
        return self.mem_gb * (1 - self.margin)


@dataclass
class StagePlan:
    stage: str
    peak_gb: float
    fits: bool
    est_hours: float
    fix: str | None = None
    detail: dict = field(default_factory=dict)


def hardware(gpu_mem_gb: float | None = None, gpu: str | None = None, mfu: float = DEFAULT_MFU,
             margin: float = DEFAULT_MARGIN) -> Hardware:
    """The GPU to plan for: given, else the detected CUDA device, else an 80 GB H100."""
    detected_name, detected_mem = None, None
    try:
        import torch

        if torch.cuda.is_available():
            detected_name = torch.cuda.get_device_name()
            detected_mem = torch.cuda.get_device_properties(0).total_memory / 2**30
    except ImportError:
        pass
    name = gpu or detected_name or "H100"
    key = next((k for k in GPUS if k.lower() in name.lower()), "H100")
    flops, bandwidth = GPUS[key]
    return Hardware(name, float(gpu_mem_gb or detected_mem or 80.0), flops, bandwidth, mfu, margin)


# --- memory -------------------------------------------------------------------------------
def weight_bytes(arch: Architecture, four_bit: bool, qlora_training: bool = False) -> float:
    embed_tensors = 1 if arch.tied_embeddings else 2
    embed = embed_tensors * arch.embedding_params * (4 if qlora_training else 2)
    linear = arch.matmul_params * (NF4_BYTES_PER_PARAM if four_bit else 2)
    small = arch.params_total - arch.matmul_params - embed_tensors * arch.embedding_params
    return linear + embed + 2 * small


def layer_activation_bytes_per_token(arch: Architecture, lora_dropout: float) -> float:
    """Bytes autograd saves per token in one decoder layer without checkpointing."""
    b = ACT_PER_HIDDEN * arch.hidden + ACT_PER_INTERMEDIATE * arch.intermediate + ACT_PER_KV * arch.kv_dim + ACT_CONST
    if lora_dropout > 0:
        b += DROPOUT_PER_HIDDEN * arch.hidden + DROPOUT_PER_INTERMEDIATE * arch.intermediate
    return b


def activation_bytes(arch: Architecture, tokens: int, lora_dropout: float, checkpointing: bool) -> float:
    """Saved activations of all decoder layers for a batch of ``tokens`` tokens (padding included)."""
    full = layer_activation_bytes_per_token(arch, lora_dropout)
    per_layer = CHECKPOINT_PER_HIDDEN * arch.hidden if checkpointing else full
    return tokens * arch.layers * per_layer


def outside_layers_bytes(arch: Architecture, batch: int, seq: int) -> float:
    """Saved tensors outside the decoder layers: the float32 log-probabilities at the answer
    positions (cross-entropy) and the final norm's float32 input."""
    return batch * ANSWER_LOGIT_POSITIONS * arch.vocab * 4.0 + batch * seq * arch.hidden * 4


def shared_tensors_bytes(arch: Architecture, batch: int, seq: int) -> float:
    """Tensors every layer uses, alive for the whole step: the padding mask (one byte per
    query-key pair) and the rotary cos/sin tables (bf16). Autograd saves them once; with
    checkpointing the recomputation keeps them instead."""
    return batch * seq * seq + batch * seq * arch.head_dim * 2 * 2


def saved_tensor_bytes(arch: Architecture, batch: int, seq: int, lora_dropout: float, checkpointing: bool) -> float:
    """What autograd saves for backward in one training forward pass: the quantity a CPU run can
    measure exactly (measure.saved_activation_bytes)."""
    shared = 0 if checkpointing else shared_tensors_bytes(arch, batch, seq)
    return activation_bytes(arch, batch * seq, lora_dropout, checkpointing) + outside_layers_bytes(arch, batch, seq) + shared


def train_peak_bytes(arch: Architecture, batch: int, seq: int, lora_params: int, lora_dropout: float,
                     checkpointing: bool, four_bit: bool) -> dict:
    tokens = batch * seq
    one_layer = tokens * layer_activation_bytes_per_token(arch, lora_dropout)
    parts = {
        "weights": weight_bytes(arch, four_bit, qlora_training=four_bit),
        "lora_and_optimizer": 16.0 * lora_params,
        "activations": activation_bytes(arch, tokens, lora_dropout, checkpointing),
        # backward holds one layer's gradients beside the saved tensors; checkpointing also
        # rebuilds one layer's activations at a time
        "backward_transient": one_layer * (2 if checkpointing else 1),
        "outside_layers": outside_layers_bytes(arch, batch, seq) + shared_tensors_bytes(arch, batch, seq),
        "logits_grad": batch * ANSWER_LOGIT_POSITIONS * arch.vocab * 4.0,
    }
    return parts


def packs_single_query_gqa() -> bool:
    """Whether transformers' SDPA attention runs a one-token query on the grouped key/value heads
    (``pack_gqa``, transformers >= 5.2x) instead of expanding them with repeat_kv under a mask."""
    try:
        from transformers.integrations import sdpa_attention
    except ImportError:
        return False
    return hasattr(sdpa_attention, "pack_gqa")


def layer_kv_bytes(arch: Architecture, rows: int, seq: int) -> float:
    """One decoder layer's cached keys and values for ``rows`` sequences of ``seq`` tokens (bf16)."""
    return rows * seq * 2 * arch.kv_dim * 2


def eval_phases(arch: Architecture, batch: int, beams: int, seq: int, four_bit: bool, new_tokens: int) -> dict:
    """Bytes alive at the two peaks of constrained beam search over one batch (generation.decode).

    prefill: the prompts are read once at ``batch`` rows (prefill_once): the cache filling up, one
    layer's intermediate tensors, the padding mask, and repeat_kv's copy of that layer's keys and
    values at full head count (grouped-query models under a padding mask: SDPA cannot take the
    grouped layout with a mask, so transformers expands it).
    decode: ``batch x beams`` rows: the whole cache and ``output_scores`` (every step's float32
    log-probabilities are kept to the end: sequences_scores needs them), plus the larger of two
    transients that never coexist: a layer's attention (the copy torch.cat / index_select make of
    its keys or values, and the repeat_kv copy at beam width where the installed transformers
    still expands grouped heads for a one-token query) or the step's logits with their float32
    copies (upcast, log-softmax, the trie mask, beam scores).
    """
    rows = batch * beams
    group = arch.heads // arch.kv_heads
    full_heads = lambda r: r * seq * 2 * arch.q_dim * 2 if group > 1 else 0  # noqa: E731
    prefill = {
        "kv_cache": arch.layers * layer_kv_bytes(arch, batch, seq),
        "layer_tensors": batch * seq * (4 * arch.hidden + 2 * arch.kv_dim + 3 * arch.intermediate) * 2,
        "padding_mask": batch * seq * seq,
        "gqa_repeat_kv": full_heads(batch),
    }
    decode = {
        "kv_cache": arch.layers * layer_kv_bytes(arch, rows, seq),
        "output_scores": new_tokens * rows * arch.vocab * 4,
        # prefill_once repeats the cache per beam one layer at a time; later each step rebuilds a layer
        "cache_concat": max(layer_kv_bytes(arch, batch, seq), layer_kv_bytes(arch, rows, seq) / 2),
        "gqa_repeat_kv": 0 if packs_single_query_gqa() else full_heads(rows),
        "logits": rows * arch.vocab * (2 + 4 * LOGIT_FP32_COPIES),
    }
    return {"weights": weight_bytes(arch, four_bit), "prefill": prefill, "decode": decode}


def phase_bytes(phase: str, terms: dict) -> float:
    if phase == "prefill":
        return sum(terms.values())
    return (terms["kv_cache"] + terms["output_scores"]
            + max(terms["cache_concat"] + terms["gqa_repeat_kv"], terms["logits"]))


def eval_peak_bytes(arch: Architecture, batch: int, beams: int, seq: int, four_bit: bool, new_tokens: int = 12) -> float:
    phases = eval_phases(arch, batch, beams, seq, four_bit, new_tokens)
    return phases["weights"] + max(phase_bytes(k, phases[k]) for k in ("prefill", "decode"))


def eval_parts(arch: Architecture, batch: int, beams: int, seq: int, four_bit: bool, new_tokens: int = 12) -> dict:
    """The terms of the phase that sets the peak, named ``<phase>:<term>``, beside the weights."""
    phases = eval_phases(arch, batch, beams, seq, four_bit, new_tokens)
    phase = max(("prefill", "decode"), key=lambda k: phase_bytes(k, phases[k]))
    return {"weights": phases["weights"], **{f"{phase}:{k}": v for k, v in phases[phase].items()}}


# --- time ---------------------------------------------------------------------------------
def train_flops(arch: Architecture, tokens: float, mean_seq: float, lora_params: int, checkpointing: bool) -> float:
    forward = 2 * arch.matmul_params + 2 * arch.layers * arch.q_dim * mean_seq  # matmuls + causal attention
    passes = 3 if checkpointing else 2  # backward through frozen weights: input gradients only
    return tokens * (forward * passes + 6 * lora_params)


def decode_seconds(arch, hw: Hardware, batches: int, steps: int, weights: float, kv: float) -> float:
    per_step = (weights + kv) / (hw.bandwidth * DECODE_BANDWIDTH_EFFICIENCY) + DECODE_STEP_OVERHEAD_S
    return batches * steps * per_step


# --- stages -------------------------------------------------------------------------------
def _gb(b: float) -> float:
    return round(b / 2**30, 1)


def _fits(total_bytes: float, hw: Hardware) -> bool:
    return total_bytes / 2**30 + CUDA_OVERHEAD_GB <= hw.budget_gb


def _peak(parts: dict) -> float:
    return sum(parts.values())


def seq_lengths(stats: DataStats, max_input_tokens: int, extra: int) -> tuple[int, float]:
    """(longest, mean) prompt+answer length in tokens."""
    cap = max_input_tokens or 10**9
    longest = min(cap, stats.max_input_tokens or cap)
    return longest + PROMPT_OVERHEAD_TOKENS + extra, min(cap, stats.mean_input_tokens) + PROMPT_OVERHEAD_TOKENS + extra


def plan_train(key: str, arch: Architecture, entry: dict, tcfg: dict, max_input_tokens: int, stats: DataStats,
               hw: Hardware, extra_tokens: int = 0, stage: str | None = None, probe: StagePlan | None = None) -> StagePlan:
    """``extra_tokens``: prompt tokens beyond the encounter (a shortlist); ``stage``: default train@<key>;
    ``probe``: the plan of decoding the validation rows once (recipe.select_by: exact_match), paid at every
    evaluation; its peak (weights, adapter and optimizer state stay resident) counts toward the stage's."""
    four_bit = bool(entry.get("load_in_4bit"))
    lora = arch.lora_params(tcfg["lora_r"], tcfg["target_modules"])
    seq, mean_seq = seq_lengths(stats, max_input_tokens, ANSWER_TOKENS + extra_tokens)

    def peak(batch=tcfg["batch_size"], gc=tcfg["gradient_checkpointing"], fb=four_bit, s=seq):
        return _peak(train_peak_bytes(arch, batch, s, lora, tcfg["lora_dropout"], gc, fb))

    parts = train_peak_bytes(arch, tcfg["batch_size"], seq, lora, tcfg["lora_dropout"],
                             tcfg["gradient_checkpointing"], four_bit)
    fits = _fits(_peak(parts), hw)
    procs = tcfg.get("num_processes", 1)
    effective = tcfg["batch_size"] * tcfg["grad_accum"] * procs
    steps_per_epoch = math.ceil(stats.train / effective)
    steps = math.ceil(steps_per_epoch * tcfg["num_epochs"])
    epochs = tcfg["num_epochs"]
    if tcfg.get("max_steps") and tcfg["max_steps"] < steps:  # a smoke run stops early
        epochs, steps = epochs * tcfg["max_steps"] / steps, tcfg["max_steps"]
    evals = max(1, steps // tcfg["eval_steps"])  # the Trainer evaluates at every multiple of eval_steps
    val_rows = min(stats.val, tcfg.get("max_val_samples") or stats.val)
    train_tokens = stats.train * mean_seq * epochs
    flops = train_flops(arch, train_tokens, mean_seq, lora, tcfg["gradient_checkpointing"])
    flops += evals * val_rows * mean_seq * 2 * arch.matmul_params
    seconds = flops / (hw.flops * hw.mfu * (2 / 3 if four_bit else 1)) / procs
    peak_b = _peak(parts)
    detail = {}
    if probe is not None and tcfg.get("select_by", "exact_match") == "exact_match":
        seconds += evals * probe.detail["seconds"]
        # the probe decodes a merged copy of the weights (4-bit ones are decoded in place) beside the training
        # weights, the adapter and its optimizer state
        probe_b = probe.peak_gb * 2**30 + 16.0 * lora + (0 if four_bit else weight_bytes(arch, False))
        peak_b = max(peak_b, probe_b)
        fits = fits and _fits(probe_b, hw)
        detail = {"probe_peak_gb": _gb(probe_b), "probe_seconds_each": probe.detail["seconds"], "probe_samples": probe.detail["samples"]}
    fix = None
    if not fits:
        fix = _train_fix(key, tcfg, peak, hw, max_input_tokens, stats, four_bit)
    return StagePlan(stage or f"train@{key}", _gb(peak_b), fits, round(seconds / 3600, 2), fix, {
        "params_total": arch.params_total, "trainable_params": lora, "batch_tokens": tcfg["batch_size"] * seq,
        "seq_len": seq, "effective_batch": effective, "steps": steps, "evals": evals,
        "tflops": round(flops / 1e12), "parts_gb": {k: _gb(v) for k, v in parts.items()}, **detail})


def _train_fix(key, tcfg, peak, hw, max_input_tokens, stats, four_bit) -> str:
    batch, accum = tcfg["batch_size"], tcfg["grad_accum"]
    b = batch // 2
    while b >= 1:
        if batch % b == 0 and _fits(peak(batch=b), hw):
            return (f"-S recipe.batch_size={b} -S recipe.grad_accum={accum * batch // b} (same effective batch; "
                    f"peak {_gb(peak(batch=b))} GB)")
        b //= 2
    if _fits(peak(gc=True), hw):
        return f"-S recipe.gradient_checkpointing=true (about 1.3x the compute; peak {_gb(peak(gc=True))} GB)"
    if not four_bit and _fits(peak(fb=True), hw):
        return f"-S models.{key}.load_in_4bit=true (QLoRA; peak {_gb(peak(fb=True))} GB)"
    for cap in (1024, 768, 512):
        if cap < max_input_tokens:
            s, _ = seq_lengths(stats, cap, ANSWER_TOKENS)
            if _fits(peak(batch=1, gc=True, s=s), hw):
                return (f"-S decoding.max_input_tokens={cap} -S recipe.batch_size=1 -S recipe.grad_accum={batch * accum} "
                        "-S recipe.gradient_checkpointing=true")
    return f"does not fit a {hw.mem_gb:.0f} GB GPU even at batch 1 with checkpointing; use a larger GPU"


def plan_eval(system: str, key: str, arch: Architecture, entry: dict, ecfg: dict, stats: DataStats,
              hw: Hardware, few_shot: int = 0, batch_key: str = "decoding.batch_size", extra_tokens: int = 0,
              splits: tuple[str, ...] = ("val", "calibration", "test"), seeds: int = 1) -> StagePlan:
    """A predicting stage: the first decoding.max_samples rows of each of ``splits``, and the test rows again for
    each training seed after the first."""
    four_bit = bool(entry.get("load_in_4bit"))
    beams = (ecfg.get("num_beams") or ecfg["top_k"]) if ecfg["constrained"] else 1
    shot_tokens = few_shot * (min(ecfg.get("max_shot_tokens") or ecfg["max_input_tokens"], stats.mean_input_tokens)
                              + 30 + ANSWER_TOKENS)
    seq, mean_seq = seq_lengths(stats, ecfg["max_input_tokens"], ecfg["max_new_tokens"] + int(shot_tokens) + extra_tokens)
    cap = lambda rows: min(rows, ecfg.get("max_samples") or rows)  # noqa: E731
    n = sum(cap(getattr(stats, split)) for split in splits) + (seeds - 1) * cap(stats.test)

    new_tokens = ecfg["max_new_tokens"]

    def peak(batch=ecfg["batch_size"], fb=four_bit, s=seq):
        return eval_peak_bytes(arch, batch, beams, s, fb, new_tokens)

    parts = eval_parts(arch, ecfg["batch_size"], beams, seq, four_bit, new_tokens)
    total = peak()
    fits = _fits(total, hw)
    batches = math.ceil(n / ecfg["batch_size"])
    prefill = n * mean_seq * (2 * arch.matmul_params + 2 * arch.layers * arch.q_dim * mean_seq)
    kv_mean = arch.layers * layer_kv_bytes(arch, ecfg["batch_size"] * beams, mean_seq)
    seconds = prefill / (hw.flops * hw.mfu * (2 / 3 if four_bit else 1))
    seconds += decode_seconds(arch, hw, batches, new_tokens, parts["weights"], kv_mean)
    fix = None
    if not fits:
        fix = next((f"-S {batch_key}={b} (peak {_gb(peak(batch=b))} GB)" for b in
                    (ecfg["batch_size"] // 2 ** k for k in range(1, 8)) if b >= 1 and _fits(peak(batch=b), hw)), None)
        if fix is None and not four_bit and _fits(peak(batch=1, fb=True), hw):
            fix = f"-S models.{key}.load_in_4bit=true -S {batch_key}=1"
        fix = fix or f"does not fit a {hw.mem_gb:.0f} GB GPU at batch 1; shorten decoding.max_input_tokens"
    return StagePlan(f"{system}", _gb(total), fits, round(seconds / 3600, 2), fix, {
        "params_total": arch.params_total, "batch": ecfg["batch_size"], "beams": beams, "seq_len": seq,
        "samples": n, "seconds": round(seconds, 1), "parts_gb": {k: _gb(v) for k, v in parts.items()}})


def plan_base(key: str, arch: Architecture) -> StagePlan:
    size = 2 * arch.params_total
    return StagePlan(f"base@{key}", 0.0, True, round(size / (DOWNLOAD_MB_PER_S * 1e6) / 3600, 2), None,
                     {"download_gb": _gb(size), "note": "download and copy; no GPU"})


def to_json(stages: list[StagePlan], hw: Hardware, usd_per_hour: float | None = None) -> dict:
    total = round(sum(s.est_hours for s in stages), 2)
    out = {"gpu_mem_gb": round(hw.mem_gb, 1), "gpu": hw.name, "margin": hw.margin, "mfu": hw.mfu,
           "stages": [asdict(s) for s in stages], "total_est_hours": total, "fits": all(s.fits for s in stages)}
    if usd_per_hour:
        out["est_usd"], out["usd_per_hour"] = round(total * usd_per_hour, 2), usd_per_hour
        for st in out["stages"]:  # the plan's estimate of deploy's usd_per_1k, before a GPU run measures it
            if systems.role_of(st["stage"]) == "predict" and st["detail"].get("samples"):
                st["detail"]["usd_per_1k"] = round(st["detail"]["seconds"] / 3600 * usd_per_hour / st["detail"]["samples"]
                                                   * 1000, 4)
    return out
