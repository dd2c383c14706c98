#!/usr/bin/env bash
# Install what the C/Fortran client (CMakeLists.txt at the repository root) needs to build and test:
# CMake >= 3.16, a C compiler, gfortran, pkg-config and libzmq's development files, from Debian.
# An MPI C compiler is needed only for the MPI example: the mpich wheel in .venv ships `mpicc`;
# without it (and without an `mpicc` on PATH) Debian's MPICH is installed as well.
#
# Idempotent and quick when everything is there (no apt-get at all); runs as root with no prompts.
# Set SIMVUE_HPC_C_NO_MPI=1 to never install an MPI.
set -euo pipefail
cd "$(dirname "$0")/.."

want=(cmake make gcc libc6-dev pkg-config libzmq3-dev gfortran)
if [ "${SIMVUE_HPC_C_NO_MPI:-0}" != 1 ] && ! command -v mpicc >/dev/null 2>&1 && [ ! -x .venv/bin/mpicc ]; then
    want+=(libmpich-dev mpich)
fi

missing=()
for pkg in "${want[@]}"; do
    status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = "install ok installed" ] || missing+=("$pkg")
done

if [ ${#missing[@]} -eq 0 ]; then
    echo "install_c_deps: all present (${want[*]})"
    exit 0
fi

source scripts/_apt.sh
apt_install install_c_deps "${missing[@]}"
