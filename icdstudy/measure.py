"""Measured runs beside the plan: a few real LoRA optimizer steps and one generation batch.

On CUDA the real architecture runs at the planned batch and length (random weights built from
the architecture, or the real ones from models/base/<key>) and the peak is
torch.cuda.max_memory_allocated. On CPU the architecture is scaled down (2 layers, hidden 256,
same head size and width ratios) and the measured quantity is what the plan models exactly:
the bytes autograd saves for backward (saved_activation_bytes).
"""
from __future__ import annotations

import time
from dataclasses import replace

from . import plan as planmod
from .architectures import Architecture, architecture
from .training import IGNORE, CausalCollator


def scaled_down(arch: Architecture, hidden: int = 256, layers: int = 2, vocab: int = 2048) -> Architecture:
    head_dim = min(arch.head_dim, 64)
    heads = max(1, hidden // head_dim)
    group = max(1, arch.heads // arch.kv_heads)
    kv_heads = max(1, heads // group)
    heads = kv_heads * group
    return replace(arch, layers=layers, hidden=heads * head_dim, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                   intermediate=int(round(arch.intermediate * heads * head_dim / arch.hidden / 64)) * 64, vocab=vocab,
                   source=f"scaled down from {arch.hidden}x{arch.layers}")


def saved_activation_bytes(model, batch: dict, autocast_dtype=None) -> int:
    """Bytes of the tensors autograd keeps for backward in one forward pass (parameters excluded)."""
    import torch

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


def synthetic_batch(vocab: int, batch: int, seq: int, pad_id: int = 0, seed: int = 0) -> dict:
    """Token batches of the planned shape through the pipeline's own collator (answer-only logits)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    feats = []
    for b in range(batch):
        n = seq - (b % 3)  # a little left padding, as in real batches
        ids = torch.randint(1, vocab, (n,), generator=g).tolist()
        feats.append({"input_ids": ids, "labels": [IGNORE] * (n - planmod.ANSWER_TOKENS) + ids[-planmod.ANSWER_TOKENS:]})
    collate = CausalCollator.__new__(CausalCollator)
    collate.pad_id, collate.answer_logits_only = pad_id, True
    return collate(feats)


def build_model(arch: Architecture, dtype, device: str, tcfg: dict, weights_dir=None):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    if weights_dir:
        model = AutoModelForCausalLM.from_pretrained(str(weights_dir), dtype=dtype, attn_implementation="sdpa")
    else:
        model = AutoModelForCausalLM.from_config(arch.to_config(), dtype=dtype, attn_implementation="sdpa")
    model = model.to(device)
    if tcfg.get("gradient_checkpointing"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if tcfg is not None and "lora_r" in tcfg:
        model = get_peft_model(model, LoraConfig(r=tcfg["lora_r"], lora_alpha=tcfg["lora_alpha"],
                                                 lora_dropout=tcfg["lora_dropout"], task_type="CAUSAL_LM",
                                                 target_modules=list(tcfg["target_modules"])))
    return model


def train_probe(arch: Architecture, tcfg: dict, batch: int, seq: int, steps: int, device: str, weights_dir=None) -> dict:
    """A few AdamW steps at (batch, seq): peak memory, saved activations and tokens/s."""
    import torch

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
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = model(**data).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    step_s = sorted(times[1:])[len(times[1:]) // 2]  # the first step warms up kernels and the allocator
    return {"saved_activation_gb": saved / 2**30, "tokens_per_s": batch * seq / step_s,
            "peak_gb": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def measure_plan(params: dict, stages: list, hw, weights: str = "random", steps: int = 3) -> list[dict]:
    """Measured figures for each train@ stage (and, on CUDA, each zero-shot evaluation) beside its plan."""
    import torch
    from pathlib import Path

    from .params import model_entry

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    tcfg = params["train"]
    out = []
    for st in stages:
        if not st.stage.startswith("train@"):
            continue
        key = st.stage.split("@", 1)[1]
        entry = model_entry(params, key)
        arch = architecture(entry, Path("models/base") / key)
        wdir = Path(entry.get("path") or Path("models/base") / key) if weights == "real" else None
        if cuda:
            batch, seq = tcfg["batch_size"], st.detail["seq_len"]
            m = train_probe(arch, tcfg, batch, seq, steps, device, wdir)
            predicted = st.peak_gb
            measured, what = m["peak_gb"], "peak GPU memory"
        else:
            arch = scaled_down(arch)
            batch, seq = min(2, tcfg["batch_size"]), min(128, st.detail["seq_len"])
            m = train_probe(arch, tcfg, batch, seq, steps, device)
            predicted = (planmod.activation_bytes(arch, batch * seq, tcfg["lora_dropout"], tcfg["gradient_checkpointing"])
                         + planmod.outside_layers_bytes(arch, batch, seq)) / 2**30
            measured, what = m["saved_activation_gb"], "saved activations"
        err = measured / predicted - 1 if predicted else None
        tflops = planmod.train_flops(arch, m["tokens_per_s"], seq, arch.lora_params(tcfg["lora_r"], tcfg["target_modules"]),
                                     tcfg["gradient_checkpointing"]) / 1e12
        out.append({"stage": st.stage, "device": torch.cuda.get_device_name() if cuda else "cpu",
                    "architecture": f"{arch.layers} layers x {arch.hidden} hidden ({arch.source})",
                    "batch": batch, "seq_len": seq, "what": what, "predicted_gb": round(predicted, 4),
                    "measured_gb": round(measured, 4), "plan_error": round(err, 3) if err is not None else None,
                    "tokens_per_s": round(m["tokens_per_s"], 1), "achieved_tflops": round(tflops, 3),
                    "mfu": round(tflops * 1e12 / hw.flops, 4) if cuda else None,
                    "summary": f"{what} {measured:.4g} GB vs planned {predicted:.4g} GB "
                               f"({100 * err:+.1f}%), {m['tokens_per_s']:,.0f} tokens/s"})
    return out
