"""The machine a stage computes on: the CPU kernels, pinned to AVX2 so every x86-64 CPU gives the same numbers, and
the peak memory a stage records.

The math libraries' kernels are pinned to AVX2 before any of them loads.

PyTorch, MKL, oneDNN, OpenBLAS and NumPy each pick their kernels by the CPU they find: AVX512 where it
exists, AVX2 where it does not. The kernels round differently (logits moved by about 4e-6 between the two,
measured on SmolLM2-135M), and a LoRA run amplifies that over its updates. Pinned here, an AVX512 or an
AMX machine computes what an AVX2-only one computes, bit for bit (checked against a real AVX2-only run:
every prediction and every logged training loss equal; docs/method.md: Same numbers on any CPU). The
thread count does not change these kernels' results (1, 2 and 4 threads measured the same).

Each setting is a default: a variable already in the environment wins, and ICDSTUDY_NATIVE_KERNELS=1
leaves every library its own choice (faster on AVX512 machines, other digits). Nothing is pinned on a CPU
without AVX2 and FMA, or off Linux x86-64 (ARM, Apple silicon): those compute their own numbers. GPUs
are not touched. ``icdstudy/__init__.py`` pins them on import, so before a stage imports torch or numpy.
"""
# torch is imported where used: every stage imports this module, the report and the floors without torch.
from __future__ import annotations

import os
import platform
import resource
from pathlib import Path

# The AVX2 level of each library, by the variable it reads when it loads.
AVX2 = {
    "ATEN_CPU_CAPABILITY": "avx2",      # PyTorch's own kernels (norms, softmax, reductions, element-wise)
    "MKL_CBWR": "AVX2",                 # MKL's BLAS: the AVX2 code path, conditional numerical reproducibility
    "ONEDNN_MAX_CPU_ISA": "AVX2",       # oneDNN (bf16 and some fp32 paths of torch)
    "OPENBLAS_CORETYPE": "Haswell",     # NumPy's and SciPy's OpenBLAS (the floors)
    "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR",  # NumPy's own AVX512 dispatch
}
OPT_OUT = "ICDSTUDY_NATIVE_KERNELS"


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux), empty where /proc/cpuinfo cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def pinnable() -> bool:
    return platform.machine() in ("x86_64", "AMD64") and {"avx2", "fma"} <= cpu_flags()


def pin() -> dict[str, str]:
    """Set every AVX2 variable not already set; returns what was set (empty when opted out or not pinnable)."""
    if os.environ.get(OPT_OUT) == "1" or not pinnable():
        return {}
    added = {k: v for k, v in AVX2.items() if k not in os.environ}
    os.environ.update(added)
    return added


def cpu_kernels() -> str:
    """The kernels this process computes with, for run records and the report: e.g. 'AVX2 (pinned)'."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    pinned = os.environ.get("ATEN_CPU_CAPABILITY", "").upper() == capability.upper() == "AVX2"
    return f"{capability} ({'pinned' if pinned else 'native'})"


def peak_memory_mb() -> float:
    """Peak CUDA memory if a GPU was used, else the process's peak resident set size."""

    try:
        import torch

        if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
            return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    except ImportError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
