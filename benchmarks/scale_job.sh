#!/usr/bin/env bash
# A job of NODES simulated nodes on this machine, each with its node relay, as a multi-node job would
# run them: one `python -m simvue_hpc.relay` per node (on a cluster: `srun --ntasks-per-node=1 ...`),
# then the ranks with SIMVUE_HPC_HIERARCHY=node, so each connects to its node's relay. Run it under
# `simvue-hpc run` (which exports SIMVUE_HPC_ENDPOINT, _SECRET and _RUN_ID).
#   usage: scale_job.sh NODES PROCS COMMAND [ARGS...]   (rank r is on node r / ceil(PROCS / NODES))
set -u
nodes=$1 procs=$2
shift 2
py="${PYTHON:-python}"
per=$(( (procs + nodes - 1) / nodes ))
dir=$(mktemp -d)
pids=()
for (( k = 0; k < nodes; k++ )); do
    n=$(( procs - k * per )); (( n > per )) && n=$per; (( n < 0 )) && n=0
    (( n == 0 )) && continue
    "$py" -m simvue_hpc.relay --upstream "$SIMVUE_HPC_ENDPOINT" --run-id "$SIMVUE_HPC_RUN_ID" \
        --node "node$k" --expected "$n" > "$dir/relay$k.out" &
    pids+=($!)
done
for (( k = 0; k < ${#pids[@]}; k++ )); do   # each relay says READY once bound
    for (( i = 0; i < 600; i++ )); do
        grep -q READY "$dir/relay$k.out" 2>/dev/null && break
        kill -0 "${pids[$k]}" 2>/dev/null || { echo "relay $k died" >&2; exit 1; }
        sleep 0.05
    done
done
SIMVUE_HPC_HIERARCHY=node "$@"
rc=$?
# each relay ends once its node's ranks have closed; one whose ranks never all came is told to end
# (SIGTERM: it flushes, says goodbye) after 10 s
for (( i = 0; i < 100; i++ )); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    (( alive )) || break
    sleep 0.1
done
for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null; done
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
rm -rf "$dir"
exit $rc
