#!/usr/bin/env bash
# CI smoke run of every benchmark at tiny sizes (--quick): exits 0 if all of them ran.
# The figures printed at these sizes mean little; see benchmarks/README.md for real runs.
#   usage: benchmarks/run_all.sh [extra args passed to every benchmark]
set -u
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python}"
status=0
start=$(date +%s)
for bench in bench_import bench_log_call bench_ingest bench_backlog bench_end_to_end bench_host_slowdown bench_upload bench_show bench_view bench_scale bench_relay_sim bench_transport bench_pool_close; do
    t0=$(date +%s)
    if "$py" "$here/$bench.py" --quick "$@"; then
        echo "-- $bench: ok ($(( $(date +%s) - t0 )) s)"
    else
        rc=$?
        echo "-- $bench: FAILED (exit $rc)" >&2
        status=1
    fi
    echo
done
echo "-- all benchmarks: $([ $status -eq 0 ] && echo ok || echo FAILED) in $(( $(date +%s) - start )) s"
exit $status
