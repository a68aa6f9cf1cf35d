#!/usr/bin/env bash
# One-command check of a CUDA host before the full study spends GPU hours on it.
#
#   tools/gpu_check.sh               on a CUDA machine: with .whl/ (a CUDA image that has torch,
#                                    transformers, peft, accelerate, pandas, scikit-learn and matplotlib
#                                    but no network) installs the wheels tools/gpu_wheels.sh put there into
#                                    a temporary folder; else uses .venv from `make setup`
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
elif ls .whl/*.whl >/dev/null 2>&1; then   # a bare CUDA image: the carried wheels, in a temporary folder
    PY="${PYTHON:-python3}"
    site="$(mktemp -d /tmp/icdstudy-site.XXXXXX)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$site" .whl/*.whl
    export PYTHONPATH="$site:$PWD${PYTHONPATH:+:$PYTHONPATH}" ICDSTUDY_ASSETS="$PWD/.whl/assets"
elif [[ -x .venv/bin/python ]]; then        # a GPU host set up with `make setup`
    PY="${PYTHON:-.venv/bin/python}"
    export PATH="$PWD/.venv/bin:$PATH" ICDSTUDY_ASSETS="${ICDSTUDY_ASSETS:-$PWD/.venv/assets}"
else
    echo "gpu_check: neither .whl/ (tools/gpu_wheels.sh, for a host without network) nor .venv (make setup) is here" >&2
    exit 2
fi
exec "$PY" tools/gpu_check.py "$@"
