#!/usr/bin/env bash
# The one GPU check (benchmarks/gpu_check.py): benchmarks/gpu_check.sh OUT [--toy]
# Runs from a bare checkout on a machine whose python3 has torch, torchvision and lightning: pneumodet is taken
# from src/, and a package the machine lacks (pydicom) from wheels in .whl/ when that folder is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -d .whl ] && compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/pneumodet-site .whl/*.whl
  export PYTHONPATH=/tmp/pneumodet-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH}
exec "$PY" benchmarks/gpu_check.py "$@"
