#!/usr/bin/env bash
# Set up a virtual environment, run the MPI example on 4 ranks into the local store (no server
# needed) and show the resulting run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[mpi]'
export PATH="$PWD/.venv/bin:$PATH"
export SIMVUE_OFFLINE_DIRECTORY=${SIMVUE_OFFLINE_DIRECTORY:-$PWD/.simvue_hpc}
name="heat-1d-$(date +%Y%m%d-%H%M%S)"
root=$PWD
(cd "$(mktemp -d)" && mpiexec -n 4 python "$root/examples/heat_mpi.py" --steps 200 --name "$name")
simvue-hpc list
simvue-hpc show "$name"
