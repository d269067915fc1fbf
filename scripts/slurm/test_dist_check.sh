#!/usr/bin/env bash
# End-to-end proof of the distributed bridge under a real SLURM: start the one-machine cluster
# (scripts/slurm/cluster.sh), submit dist_check.sbatch with 2 tasks (and, with --two-nodes, a
# 2-node job with 2 tasks per node), check that every rank resolved its layout from SLURM and
# agreed on every collective; with --requeue also check USR1 -> exit $REQUEUE_EXIT -> requeue ->
# rerun (requeue_check.sbatch); stop the cluster (unless --keep).
#
#   cargo build -p sam-torch --example dist_check
#   scripts/slurm/test_dist_check.sh [--two-nodes] [--requeue] [--keep]
set -euo pipefail
cd "$(dirname "$0")/../.."
TWO_NODES=0 KEEP=0 REQUEUE=0
for a in "$@"; do
    case "$a" in
        --two-nodes) TWO_NODES=1 ;;
        --requeue) REQUEUE=1 ;;
        --keep) KEEP=1 ;;
        *) echo "usage: $0 [--two-nodes] [--requeue] [--keep]" >&2; exit 2 ;;
    esac
done
BIN=${DIST_CHECK_BIN:-${CARGO_TARGET_DIR:-target}/debug/examples/dist_check}
[ -x "$BIN" ] || { echo "missing $BIN: cargo build -p sam-torch --example dist_check" >&2; exit 1; }
export DIST_CHECK_BIN=$(readlink -f "$BIN")

[ $TWO_NODES = 1 ] && export SAM_SLURM_NODES=2
eval "$(scripts/slurm/cluster.sh start)"
cleanup() { [ $KEEP = 1 ] || scripts/slurm/cluster.sh stop; }
trap cleanup EXIT

OUT=$(mktemp -d)
fail=0
run_job() { # name, expected ranks, sbatch args...
    local name=$1 ranks=$2; shift 2
    local log=$OUT/$name.out rc=0
    sbatch --wait --output="$log" "$@" scripts/slurm/dist_check.sbatch > /dev/null || rc=$?
    echo "== $name: sbatch exit $rc"
    cat "$log"
    local ok dry
    ok=$(grep -c "all collectives ok" "$log" || true)
    dry=$(grep -c "^SLURM job .*: rank [0-9]* of $ranks, local rank" "$log" || true)
    if [ "$rc" -ne 0 ] || [ "$ok" -ne "$ranks" ] || [ "$dry" -ne "$ranks" ]; then
        echo "FAIL $name: exit $rc, $ok/$ranks ranks ok, $dry/$ranks layouts from SLURM"; fail=1
    else
        echo "PASS $name: $ranks ranks"
    fi
}
run_job two-tasks 2 --ntasks=2
if [ $TWO_NODES = 1 ]; then
    run_job two-nodes 4 --nodes=2 --ntasks-per-node=2 --ntasks=4
fi
if [ $REQUEUE = 1 ]; then
    log=$OUT/requeue.out
    export REQUEUE_EXIT=${SAM_SLURM_REQUEUE_EXIT:-42}
    job=$(sbatch --parsable --output="$log" scripts/slurm/requeue_check.sbatch)
    for _ in $(seq 100); do grep -q "waiting for USR1" "$log" 2>/dev/null && break; sleep 0.2; done
    scancel --batch --signal=USR1 "$job"
    start=$SECONDS
    until grep -q "resumed after requeue" "$log" 2>/dev/null; do
        [ $((SECONDS - start)) -lt 120 ] || break
        sleep 1
    done
    echo "== requeue: job $job"
    cat "$log"
    if grep -q "resumed after requeue" "$log"; then
        echo "PASS requeue: resumed $((SECONDS - start)) s after USR1"
    else
        echo "FAIL requeue: no rerun within 120 s"; fail=1
    fi
fi
exit $fail
