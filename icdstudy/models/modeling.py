"""Loading base models the same way in every stage: dtype, 4-bit, tokenizer padding."""
# torch, transformers, peft and safetensors are imported where used (seconds each): `predict --help`, the plan
# and the adapter checks load this module without them.
from __future__ import annotations

import json
import os
from pathlib import Path


class ModelError(Exception):
    pass


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def cpu_has_native_bf16() -> bool:
    """Whether this process multiplies bf16 in hardware (AVX512-BF16 or AMX, with the kernels not pinned to AVX2).
    There bf16 runs about twice as fast as float32 (docs/benchmarks.md); elsewhere it is emulated and slower. With
    the kernels pinned (icdstudy.core.machine, the default) no CPU has it: every CPU computes alike, in float32."""

    if os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() == "AVX2" or os.environ.get("ATEN_CPU_CAPABILITY") == "avx2":
        return False
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


def resolve_dtype(name: str):
    """'auto' is bf16 on CUDA (where supported) and on CPUs with native bf16 and unpinned kernels, float32 elsewhere."""
    import torch

    if name in (None, "auto"):
        if torch.cuda.is_available():
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    try:
        return getattr(torch, name)
    except AttributeError:
        raise ModelError(f"dtype {name!r} is not a torch dtype; use auto, float32, bfloat16 or float16") from None


# --- loading ----------------------------------------------------------------------------
def load_tokenizer(path: str | Path, entry: dict | None = None, padding_side: str = "left"):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path))
    tokenizer.padding_side = padding_side
    if entry and entry.get("chat_template"):
        tokenizer.chat_template = entry["chat_template"]
    if tokenizer.pad_token_id is None:
        # Llama-3 ships no pad token. Padding positions are masked by attention and by labels
        # built from lengths, so reusing EOS here is safe.
        tokenizer.pad_token = tokenizer.eos_token
    if not getattr(tokenizer, "chat_template", None):
        raise ModelError(f"{path}: the tokenizer has no chat template; set models.<key>.chat_template in params.yaml")
    return tokenizer


def local_rank() -> int:
    """This process's GPU under `accelerate launch`/torchrun (LOCAL_RANK), 0 in a single process."""

    return int(os.environ.get("LOCAL_RANK", 0))


def device_map_4bit(cuda: bool) -> dict:
    """Where a 4-bit model is loaded: the whole model on this process's own GPU (each data-parallel
    process holds a full copy), or on the CPU (tests)."""
    return {"": local_rank()} if cuda else {"": "cpu"}


def enable_tf32() -> None:
    """TF32 matmuls on CUDA through the same API the Trainer's ``tf32`` uses (transformers'
    ``enable_tf32``: ``torch.backends.fp32_precision`` on torch >= 2.9). Setting the legacy
    ``allow_tf32`` flags beside it mixes two APIs, which recent PyTorch warns about or refuses."""
    try:
        from transformers.utils.import_utils import enable_tf32 as set_tf32
    except ImportError:  # transformers before 5.x: the same setting by hand
        import torch

        torch.backends.fp32_precision = "tf32"
        return
    set_tf32(True)


def quantization_config(entry: dict, allow_cpu: bool = False):
    """NF4 4-bit where asked for and CUDA is present (or ``allow_cpu``, for tests); else None."""
    if not entry.get("load_in_4bit"):
        return None
    if not (cuda_available() or allow_cpu):
        print(f"model {entry['key']}: load_in_4bit needs CUDA; loading in full precision on CPU")
        return None
    import torch
    from transformers import BitsAndBytesConfig

    compute = torch.bfloat16 if cuda_available() else torch.float32
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute)


def load_model(path: str | Path, entry: dict, allow_cpu_4bit: bool = False, dtype=None):
    """``dtype`` overrides models.<key>.dtype (training on CPU keeps float32 master weights)."""
    from transformers import AutoModelForCausalLM

    cuda = cuda_available()
    if cuda:
        enable_tf32()
    quant = quantization_config(entry, allow_cpu=allow_cpu_4bit)
    kwargs = {"dtype": dtype or resolve_dtype(entry.get("dtype", "auto")), "attn_implementation": "sdpa"}
    if quant is not None:
        kwargs["quantization_config"] = quant
        kwargs["device_map"] = device_map_4bit(cuda)
    if not Path(path).exists():
        raise ModelError(f"model {entry['key']}: {path} does not exist; run `dvc repro base@{entry['key']}` first")
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    if quant is None and cuda:
        model = model.to(f"cuda:{local_rank()}")
    return model


def count_parameters(model) -> int:
    """Parameters of the full model (4-bit packed weights counted as the weights they hold)."""
    total = 0
    for p in model.parameters():
        n = p.numel()
        if p.__class__.__name__ == "Params4bit":
            n *= 2
        total += n
    return total


def check_adapter(adapter: str | Path, base_dir: str | Path, key: str) -> None:
    """Raise ModelError naming the folder unless it holds a readable adapter for this base model."""

    adapter = Path(adapter)
    retrain = f"train it with `dvc repro train@{key}` or pass the folder of a trained adapter"
    if not (adapter / "adapter_config.json").exists():
        raise ModelError(f"adapter {adapter}: no adapter_config.json there; {retrain}")
    try:
        json.loads((adapter / "adapter_config.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelError(f"adapter {adapter}: adapter_config.json is not valid JSON ({exc}); {retrain}") from None
    weights = adapter / "adapter_model.safetensors"
    if not weights.exists():
        raise ModelError(f"adapter {adapter}: no adapter_model.safetensors there; {retrain}")
    base_cfg = Path(base_dir) / "config.json"
    if not base_cfg.exists():
        return
    cfg = json.loads(base_cfg.read_text())
    from safetensors import safe_open

    try:
        with safe_open(str(weights), "pt") as fh:
            shapes = {name: fh.get_slice(name).get_shape() for name in fh.keys()}
    except Exception as exc:
        raise ModelError(f"adapter {adapter}: adapter_model.safetensors cannot be read ({exc}); {retrain}") from None
    for name, shape in shapes.items():
        if ".q_proj.lora_A" in name and shape[-1] != cfg["hidden_size"]:
            raise ModelError(f"adapter {adapter}: trained on another base model (its layers take {shape[-1]} inputs, "
                             f"{base_dir} has hidden size {cfg['hidden_size']}); evaluate it with its own base model "
                             f"or retrain it with `dvc repro train@{key}`")
        if ".layers." in name and int(name.split(".layers.")[1].split(".")[0]) >= cfg["num_hidden_layers"]:
            raise ModelError(f"adapter {adapter}: trained on another base model (it adapts more than the "
                             f"{cfg['num_hidden_layers']} layers of {base_dir}); retrain it with `dvc repro train@{key}`")


def oom_message(what: str, knobs: str) -> str:
    return (f"{what}: out of memory. Lower {knobs}; check any change first with `python -m icdstudy.study plan` "
            "(with the same -S overrides). Finished work is kept: rerunning continues from it.")


def is_oom(exc: BaseException) -> bool:
    """CUDA out of memory, or the host allocator failing (a host OOM kill cannot be caught)."""
    import torch

    return isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc))


def load_for_inference(base_dir: str | Path, entry: dict, adapter: str | Path | None = None):
    """Tokenizer (left padding) and model in eval mode; a LoRA adapter is merged into full-precision
    weights (one matmul per layer at inference) and kept separate on 4-bit weights."""
    if adapter:
        check_adapter(adapter, base_dir, entry["key"])
    tokenizer = load_tokenizer(adapter or base_dir, entry)
    model = load_model(base_dir, entry)
    if adapter:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, str(adapter))
        except (RuntimeError, ValueError, KeyError) as exc:
            raise ModelError(f"adapter {adapter}: does not load onto {base_dir} ({str(exc).splitlines()[0][:200]}); "
                             f"it was probably trained on another base model: retrain it with `dvc repro train@{entry['key']}`") from None
        model = inference_form(model, entry)
    model.eval()
    return tokenizer, model


def inference_form(model, entry: dict):
    """The weights a predict@ stage decodes, made from a LoRA model: the adapter merged into weights of the
    inference dtype (models.<key>.dtype as load_model resolves it: one matmul per layer); on 4-bit weights the
    adapter stays separate (where models.<key>.load_in_4bit is set, also on a CPU that loads it in full
    precision). load_for_inference and training's checkpoint probe (on a copy of the model being trained,
    float32 on a CPU, bf16 on a GPU) both make it here, so the checkpoint kept is scored on the weights that
    predict@ decodes."""
    if getattr(model, "is_loaded_in_4bit", False):
        return model.eval()
    dtype = resolve_dtype(entry.get("dtype", "auto"))
    for name, param in model.named_parameters():
        if "lora_" not in name:
            param.data = param.data.to(dtype)
    return (model if entry.get("load_in_4bit") else model.merge_and_unload()).eval()
