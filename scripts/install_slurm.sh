#!/usr/bin/env bash
# Install a single-node Slurm (slurmctld + slurmd + the client commands) and munge from Debian's
# packages, for tests/slurm. Idempotent: when everything is already there it returns at once
# without touching apt. Needs root (apt-get); never prompts.
#
#     bash scripts/install_slurm.sh
#
# The packages' own services are not started here: the tests start their own daemons with their
# own configuration (tests/slurm/conftest.py), so nothing is left running on the machine.
set -euo pipefail

NEEDED=(slurmctld slurmd sbatch srun sinfo squeue scancel munged mungekey)
missing=()
for exe in "${NEEDED[@]}"; do
    command -v "$exe" >/dev/null 2>&1 || [ -x "/usr/sbin/$exe" ] || missing+=("$exe")
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install_slurm: Slurm and munge are already installed"
    exit 0
fi
echo "install_slurm: missing ${missing[*]}; installing slurm-wlm and munge"

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install_slurm: needs root (or sudo) for apt-get" >&2; exit 1; }
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# Debian's maintainer scripts would start the daemons with the default configuration; keep them
# from starting anything (policy-rc.d exit 101 = "action forbidden") for the install only.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod 755 "$policy"
    created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
    slurm-wlm slurm-client slurmctld slurmd munge >/dev/null
for exe in "${NEEDED[@]}"; do
    command -v "$exe" >/dev/null 2>&1 || [ -x "/usr/sbin/$exe" ] || {
        echo "install_slurm: $exe is still missing after the install" >&2
        exit 1
    }
done
echo "install_slurm: installed slurm-wlm $(dpkg-query -W -f='${Version}' slurm-wlm 2>/dev/null || true) and munge"
