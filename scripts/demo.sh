#!/usr/bin/env bash
# Set up a virtual environment, run the MPI example on 4 ranks into the local store (no server
# needed), show the resulting run and write its HTML report (the last line is the report's path).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
venv_with mpi,view
export PATH="$PWD/.venv/bin:$PATH"
export SIMVUE_OFFLINE_DIRECTORY=${SIMVUE_OFFLINE_DIRECTORY:-$PWD/.simvue_hpc}
name="heat-1d-$(date +%Y%m%d-%H%M%S)"
root=$PWD
(cd "$(mktemp -d)" && mpiexec -n 4 python "$root/examples/heat_mpi.py" --steps 200 --name "$name")
simvue-hpc list
simvue-hpc show "$name"
report="$SIMVUE_OFFLINE_DIRECTORY/$name.html"
simvue-hpc report "$name" -o "$report" >/dev/null
echo
echo "Also try: simvue-hpc plot $name residual energy | export $name --metrics m.csv | show $name --json"
echo "The run's report (one self-contained page; open it in a browser):"
echo "$report"
