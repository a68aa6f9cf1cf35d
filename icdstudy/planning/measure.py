"""Measured runs beside the plan: a few real LoRA optimizer steps, and one constrained beam-search
batch, per planned stage.

On CUDA the real architecture runs at the planned batch and length (random weights built from
the architecture, 4-bit NF4 where the model is loaded in 4 bits, or the real weights from
models/base/<key>) and the peak is torch.cuda.max_memory_allocated. On CPU the architecture is
scaled down (a few layers, hidden 256, the same head size and width ratios) and measured at a
small batch: for training the bytes autograd saves for backward (saved_activation_bytes), for
evaluation the peak of live tensor bytes (PeakTensorBytes), each against the plan's own
formula at that shape. Every model is freed before the next one is built.
"""
# bitsandbytes is optional (CUDA hosts only): imported where a 4-bit model is measured.
from __future__ import annotations

import gc
import random
import time
import weakref
from dataclasses import replace
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from transformers import AutoModelForCausalLM

from icdstudy import systems
from icdstudy.core.params import model_entry, run_recipe
from icdstudy.finetune.examples import CausalCollator, IGNORE
from icdstudy.inference.generation import GenerationSettings, LabelTrie, decode
from icdstudy.planning import plan as planmod
from icdstudy.planning.architectures import Architecture, architecture


def scaled_down(arch: Architecture, hidden: int = 256, layers: int = 2, vocab: int = 2048) -> Architecture:
    head_dim = min(arch.head_dim, 64)
    heads = max(1, hidden // head_dim)
    group = max(1, arch.heads // arch.kv_heads)
    kv_heads = max(1, heads // group)
    heads = kv_heads * group
    return replace(arch, layers=layers, hidden=heads * head_dim, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                   intermediate=int(round(arch.intermediate * heads * head_dim / arch.hidden / 64)) * 64, vocab=vocab,
                   source=f"scaled down from {arch.hidden}x{arch.layers}")


# --- memory accounting ---------------------------------------------------------------------
def saved_activation_bytes(model, batch: dict, autocast_dtype=None) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward pass (parameters excluded)."""

    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    device = next(model.parameters()).device.type
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        with torch.autocast(device, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            model(**{k: v.to(next(model.parameters()).device) if hasattr(v, "to") else v for k, v in batch.items()})
    return sum(kept.values())


def model_bytes(model) -> int:
    """Bytes of the parameters and buffers as stored (4-bit weights at their packed size)."""
    seen = {}
    for t in list(model.parameters()) + list(model.buffers()):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _peak_tensor_bytes_mode():
    class PeakTensorBytes(TorchDispatchMode):
        """The CPU's analogue of torch.cuda.max_memory_allocated: the peak of bytes held by tensors
        created inside the block (each storage counted once, released when its last tensor goes).
        Scratch space inside a single kernel is not seen."""

        def __init__(self):
            super().__init__()
            self.refs: dict[int, int] = {}
            self.size: dict[int, int] = {}
            self.current = self.peak = 0

        def _release(self, key: int) -> None:
            self.refs[key] -= 1
            if not self.refs[key]:
                del self.refs[key]
                self.current -= self.size.pop(key)

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_flatten(out)[0]:
                if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                    continue
                storage = t.untyped_storage()
                key = storage.data_ptr()
                if not key:
                    continue
                if key not in self.refs:
                    self.refs[key] = 0
                    self.size[key] = storage.nbytes()
                    self.current += self.size[key]
                    self.peak = max(self.peak, self.current)
                self.refs[key] += 1
                weakref.finalize(t, self._release, key)
            return out

    return PeakTensorBytes()


def free_memory() -> None:
    """Return what the last model held to the allocator (between models in one process)."""

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


# --- models --------------------------------------------------------------------------------
def synthetic_batch(vocab: int, batch: int, seq: int, pad_id: int = 0, seed: int = 0) -> dict:
    """Token batches of the planned shape through the pipeline's own collator (answer-only logits)."""

    g = torch.Generator().manual_seed(seed)
    feats = []
    for b in range(batch):
        n = seq - (b % 3)  # a little left padding, as in real batches
        ids = torch.randint(1, vocab, (n,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": [IGNORE] * (n - planmod.ANSWER_TOKENS) + ids[-planmod.ANSWER_TOKENS:]})
    collate = CausalCollator.__new__(CausalCollator)
    collate.pad_id, collate.answer_logits_only = pad_id, True
    return collate(feats)


def quantize_4bit(model, device: str):
    """Replace the decoder's linear layers by NF4 bitsandbytes layers on ``device``, as
    ``from_pretrained(quantization_config=...)`` loads them (LM head and embeddings stay bf16)."""
    import bitsandbytes as bnb

    for module in list(model.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and name != "lm_head":
                q = bnb.nn.Linear4bit(child.in_features, child.out_features, bias=child.bias is not None,
                                      compute_dtype=torch.bfloat16, compress_statistics=True, quant_type="nf4")
                q.weight = bnb.nn.Params4bit(child.weight.data, requires_grad=False, quant_type="nf4",
                                             compress_statistics=True)
                if child.bias is not None:
                    q.bias = child.bias
                setattr(module, name, q.to(device))  # moving a Params4bit quantizes it
                del child
    return model.to(device)


def build_model(arch: Architecture, dtype, device: str, tcfg: dict | None, weights_dir=None, four_bit: bool = False):
    """The architecture with random weights (or ``weights_dir``'s), optionally NF4, optionally with LoRA."""

    torch.manual_seed(0)
    if weights_dir:
        model = AutoModelForCausalLM.from_pretrained(str(weights_dir), dtype=dtype, attn_implementation="sdpa")
    else:
        with torch.device(device):  # random init where the model will live: an 8B model initializes in seconds on a GPU
            model = AutoModelForCausalLM.from_config(arch.to_config(), dtype=dtype, attn_implementation="sdpa")
    model = quantize_4bit(model, device) if four_bit else model.to(device)
    if tcfg and tcfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if tcfg and "lora_r" in tcfg:
        model = get_peft_model(model, LoraConfig(r=tcfg["lora_r"], lora_alpha=tcfg["lora_alpha"],
                                                 lora_dropout=tcfg["lora_dropout"], task_type="CAUSAL_LM",
                                                 target_modules=list(tcfg["target_modules"])))
    return model


# --- probes --------------------------------------------------------------------------------
def train_step(model, batch: dict, optimizer, device: str, bf16: bool = True):
    """One optimizer step as the Trainer takes it (bf16 autocast where ``bf16``); the loss."""

    with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
        loss = model(**batch).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss


def train_probe(arch: Architecture, tcfg: dict, batch: int, seq: int, steps: int, device: str, weights_dir=None) -> dict:
    """A few AdamW steps at (batch, seq): peak memory, saved activations and tokens/s."""

    cuda = device == "cuda"
    model = build_model(arch, torch.bfloat16, device, tcfg, weights_dir)
    model.train()
    data = synthetic_batch(arch.vocab, batch, seq)
    data = {k: v.to(device) if hasattr(v, "to") else v for k, v in data.items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    saved = saved_activation_bytes(model, data, torch.bfloat16)
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(max(2, steps)):
        t0 = time.perf_counter()
        train_step(model, data, opt, device)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step_s = sorted(times[1:])[len(times[1:]) // 2]  # the first step warms up kernels and the allocator
    result = {"saved_activation_gb": saved / 2**30, "tokens_per_s": batch * seq / step_s,
              "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}
    del model, opt, data
    free_memory()
    return result


def random_label_trie(vocab: int, labels: int, length: int, seed: int = 0):
    """A trie over ``labels`` random token sequences of ``length`` tokens, then EOS (vocab - 1):
    constrained decoding of a chosen depth without a tokenizer. Beam search over it runs
    ``length + 2`` steps (the last one finds every beam finished)."""


    rng = random.Random(seed)
    eos = vocab - 1
    seqs = {}
    while len(seqs) < labels:
        ids = tuple(rng.randrange(1, vocab - 1) for _ in range(length)) + (eos,)
        seqs[f"L{len(seqs)}"] = list(ids)
    return LabelTrie(seqs), eos


def synthetic_prompts(vocab: int, batch: int, seq: int, pad_id: int = 0, seed: int = 0) -> dict:
    """A left-padded batch of random prompts, the longest ``seq`` tokens (as length-sorted batches are)."""

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab - 1, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    for b in range(batch):
        pad = b % 4  # a little left padding, so the padding-mask path is the one measured
        ids[b, :pad], mask[b, :pad] = pad_id, 0
    return {"input_ids": ids, "attention_mask": mask}


def eval_probe(arch: Architecture, four_bit: bool, batch: int, seq: int, top_k: int, beams: int, new_tokens: int,
               device: str, weights_dir=None, labels: int = 500) -> dict:
    """One constrained beam-search batch through generation.decode, as predict@ runs it:
    peak memory (CUDA allocator, or live tensor bytes on CPU, weights included), samples/s and the
    prompt tokens read per second."""


    cuda = device == "cuda"
    model = build_model(arch, torch.bfloat16, device, None, weights_dir, four_bit)
    model.eval()
    trie, eos = random_label_trie(arch.vocab, labels, length=max(1, new_tokens - 2))  # as many steps as planned
    enc = {k: v.to(device) for k, v in synthetic_prompts(arch.vocab, batch, seq - new_tokens).items()}
    settings = GenerationSettings(batch_size=batch, max_new_tokens=new_tokens, constrained=True, top_k=top_k,
                                  num_beams=beams, max_input_tokens=None, max_shot_tokens=None, seed=0,
                                  repetition_penalty=1.0)
    weights = model_bytes(model)
    if cuda:
        free_memory()
        decode(model, enc, settings, trie, eos, 0)  # warm-up: kernels, cuBLAS workspaces
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        decode(model, enc, settings, trie, eos, 0)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated()
    else:
        meter = _peak_tensor_bytes_mode()
        t0 = time.perf_counter()
        with meter:
            decode(model, enc, settings, trie, eos, 0)
        seconds = time.perf_counter() - t0
        peak = weights + meter.peak
    del model, enc
    free_memory()
    return {"peak_gb": peak / 2**30, "weights_gb": weights / 2**30, "seconds": seconds,
            "samples_per_s": batch / seconds, "prompt_tokens_per_s": batch * (seq - new_tokens) / seconds}


# --- beside the plan -----------------------------------------------------------------------
def _row(st, arch, device: str, batch: int, seq: int, what: str, predicted: float, measured: float, extra: dict) -> dict:
    err = measured / predicted - 1 if predicted else None
    speed = (f"{extra['tokens_per_s']:,.0f} tokens/s" if "tokens_per_s" in extra else
             f"{extra['samples_per_s']:,.2f} samples/s")
    return {"stage": st.stage, "device": device, "architecture": f"{arch.layers} layers x {arch.hidden} hidden ({arch.source})",
            "batch": batch, "seq_len": seq, "what": what, "predicted_gb": round(predicted, 4),
            "measured_gb": round(measured, 4), "plan_error": round(err, 3) if err is not None else None, **extra,
            "summary": f"{what} {measured:.4g} GB vs planned {predicted:.4g} GB ({100 * err:+.1f}%), {speed}"}


def measure_plan(params: dict, stages: list, hw, weights: str = "random", steps: int = 3) -> list[dict]:
    """Measured figures for each train@ and evaluation stage of ``stages`` beside its plan."""



    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    tcfg, ecfg = params["recipe"], params["decoding"]
    out = []

    made = systems.stages(params)
    for st in stages:
        role, what = made.get(st.stage, (None, None))
        if role not in ("train", "predict"):
            continue
        key = systems.run_entry(params, what)["model"] if role == "train" else what.model
        entry = model_entry(params, key)
        arch = architecture(entry, Path("models/base") / key)
        wdir = Path(entry.get("path") or Path("models/base") / key) if weights == "real" else None
        four_bit = bool(entry.get("load_in_4bit"))
        if role == "train":
            tcfg = run_recipe(params, what)
            lora = arch.lora_params(tcfg["lora_r"], tcfg["target_modules"])
            if cuda:
                batch, seq = tcfg["batch_size"], st.detail["seq_len"]
                m = train_probe(arch, tcfg, batch, seq, steps, device, wdir)
                predicted, measured, what = st.peak_gb, m["peak_gb"], "peak GPU memory"
            else:
                arch = scaled_down(arch)
                lora = arch.lora_params(tcfg["lora_r"], tcfg["target_modules"])
                batch, seq = min(2, tcfg["batch_size"]), min(128, st.detail["seq_len"])
                m = train_probe(arch, tcfg, batch, seq, steps, device)
                predicted = planmod.saved_tensor_bytes(arch, batch, seq, tcfg["lora_dropout"],
                                                       tcfg["gradient_checkpointing"]) / 2**30
                measured, what = m["saved_activation_gb"], "saved activations"
            tflops = planmod.train_flops(arch, m["tokens_per_s"], seq, lora, tcfg["gradient_checkpointing"]) / 1e12
            out.append(_row(st, arch, device_name, batch, seq, what, predicted, measured, {
                "tokens_per_s": round(m["tokens_per_s"], 1), "achieved_tflops": round(tflops, 3),
                "mfu": round(tflops * 1e12 / hw.flops, 4) if cuda else None}))
            continue
        beams = (ecfg.get("num_beams") or ecfg["top_k"]) if ecfg["constrained"] else 1
        top_k = ecfg["top_k"] if ecfg["constrained"] else 1
        new_tokens = ecfg["max_new_tokens"]
        if cuda:
            batch, seq = st.detail["batch"], st.detail["seq_len"]
            m = eval_probe(arch, four_bit, batch, seq, top_k, beams, new_tokens, device, wdir)
            predicted, what = st.peak_gb, "peak GPU memory"
        else:
            arch = scaled_down(arch, hidden=256, layers=3, vocab=8192)
            batch, seq = min(4, st.detail["batch"]), min(160, st.detail["seq_len"])
            m = eval_probe(arch, four_bit, batch, seq, top_k, beams, new_tokens, device)
            predicted = planmod.eval_peak_bytes(arch, batch, beams, seq, four_bit, new_tokens) / 2**30
            what = "peak tensor memory"
        # prompt FLOPs over the whole batch's time (decoding included): a lower bound of what the prefill reaches
        tflops = batch * (seq - new_tokens) * 2 * arch.matmul_params / m["seconds"] / 1e12
        out.append(_row(st, arch, device_name, batch, seq, what, predicted, m["peak_gb"], {
            "samples_per_s": round(m["samples_per_s"], 3), "prompt_tokens_per_s": round(m["prompt_tokens_per_s"], 1),
            "achieved_tflops": round(tflops, 3), "mfu": round(tflops * 1e12 / hw.flops, 4) if cuda else None,
            "four_bit": four_bit}))
    return out
