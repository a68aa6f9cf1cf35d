#!/usr/bin/env bash
# One-command check of a CUDA host before the full study spends GPU hours on it.
#
#   tools/gpu_check.sh               on a CUDA machine that has torch, transformers, peft, accelerate,
#                                    pandas, scikit-learn and matplotlib but no network: installs the
#                                    wheels tools/gpu_wheels.sh put in .whl/ into a temporary folder
#   tools/gpu_check.sh --cpu-smoke   the same driver at tiny sizes on CPU, in this project's .venv (CI)
#
# Extra arguments go to tools/gpu_check.py (e.g. --parts plan benchmarks). The report (gpu_check.md and
# gpu_check.json) goes to $OUT when it is set, else benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${1:-}" == "--cpu-smoke" ]]; then
    PY="${PYTHON:-.venv/bin/python}"
    [[ -x "$PY" ]] || { echo "gpu_check: $PY not found; run \`make setup\` first" >&2; exit 2; }
    export PATH="$(dirname "$PY"):$PATH" ICDSTUDY_ASSETS="${ICDSTUDY_ASSETS:-$(dirname "$PY")/../assets}"
else
    PY="${PYTHON:-python3}"
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "gpu_check: no wheels in .whl/; run tools/gpu_wheels.sh on a machine with PyPI access and bring .whl/ along" >&2
        exit 2
    fi
    site="$(mktemp -d /tmp/icdstudy-site.XXXXXX)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" ICDSTUDY_ASSETS="$PWD/.whl/assets"
fi
exec "$PY" tools/gpu_check.py "$@"
