#!/usr/bin/env bash
# Set up a virtual environment on a fresh machine and run every check CI runs:
# lint, types, the test suite (unit, real ZeroMQ, real mpiexec, the test Simvue server)
# and a smoke run of the benchmarks at tiny sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
venv_with dev
bash scripts/install_c_deps.sh       # cmake, libzmq, gfortran from Debian, for the C and Fortran client
bash scripts/install_slurm.sh        # slurmctld, slurmd, munge from Debian: tests/slurm starts a real Slurm
bash scripts/install_chromium.sh     # Debian's Chromium: the HTML report is loaded in a real headless browser
export PATH="$PWD/.venv/bin:$PATH"   # the mpich wheel's mpiexec
echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy"; mypy
echo "== import rules"; lint-imports
echo "== pytest"; python -m pytest -q -p no:cacheprovider
if [ -f benchmarks/run_all.sh ]; then echo "== benchmarks (smoke)"; bash benchmarks/run_all.sh --quick; fi
