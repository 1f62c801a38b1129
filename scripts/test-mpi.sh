#!/usr/bin/env bash
# Builds rustspeed-comm with the `mpi` feature and runs its MPI checks (crates/comm/tests/mpi.rs) under mpirun:
#   1. `collectives` at 2 ranks, and at 3 (a world size that is not a power of two takes other MPI algorithms):
#      every collective against its serial definition; the job must exit 0.
#   2. `timeout` at 2 ranks: rank 1 stalls, rank 0 must report a barrier timeout within the timeout, and the job
#      must then end through MPI_Abort with the backend's abort code (70) instead of hanging.
#   3. Training end to end: `rustspeed launch --num_gpus N -- rustspeed train ...` (N processes over MPI) at
#      ZeRO stages 0-3 with N = 2, and stage 3 with N = 4, against `rustspeed train --world-size N` (N threads):
#      the same losses (bit for bit at 2 processes; to 1e-5 at 4, where MPI sums in another order).
# Needs the packages that scripts/install-mpi.sh installs. Exits non-zero if anything fails.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v mpirun >/dev/null; then
    echo "test-mpi: mpirun not found; run scripts/install-mpi.sh first" >&2
    exit 1
fi

# Open MPI refuses to run as root without these; CI runs as root. (Other MPIs ignore OMPI_* variables.)
if [ "$(id -u)" -eq 0 ]; then
    export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
fi
# More ranks than cores is fine for these checks (3 ranks on a 2-core machine).
export OMPI_MCA_rmaps_base_oversubscribe=1
# Containers often forbid the cross-process memory access (CMA, ptrace) that Open MPI's shared-memory transport
# uses for large messages; copying through the shared segment works everywhere.
export OMPI_MCA_btl_vader_single_copy_mechanism=none

build_start=$(date +%s)
binary=$(cargo test -p rustspeed-comm --features mpi --test mpi --no-run --message-format=json \
    | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
if [ -z "$binary" ] || [ ! -x "$binary" ]; then
    echo "test-mpi: the build did not produce the mpi test binary" >&2
    exit 1
fi
echo "test-mpi: built $binary in $(($(date +%s) - build_start)) s"

passed=0
failed=0
pass() { echo "test-mpi: PASS $1"; passed=$((passed + 1)); }
fail() { echo "test-mpi: FAIL $1"; failed=$((failed + 1)); }

for ranks in 2 3; do
    name="collectives at $ranks ranks"
    echo "test-mpi: running $name"
    # A hang guard: the checks take about a second.
    if timeout --kill-after=10 300 mpirun -n "$ranks" "$binary" collectives; then
        pass "$name"
    else
        fail "$name (exit code $?)"
    fi
done

name="a stalled rank times out the barrier and the job aborts"
echo "test-mpi: running $name"
log=$(mktemp)
start=$(date +%s)
set +e
timeout --kill-after=10 120 mpirun -n 2 "$binary" timeout >"$log" 2>&1
code=$?
set -e
elapsed=$(($(date +%s) - start))
cat "$log"
if [ "$code" -ne 70 ]; then
    fail "$name: exit code $code, expected 70 from MPI_Abort (124 means it hung)"
elif ! grep -q '^rank 0: PASS a_stalled_rank_times_out_the_barrier' "$log"; then
    fail "$name: rank 0 did not report the timeout"
elif grep -q 'FAIL' "$log"; then
    fail "$name: a rank reported a failure"
else
    pass "$name (job ended after ${elapsed} s)"
fi
rm -f "$log"

cargo build -p rustspeed --features mpi
bin="$PWD/target/debug/rustspeed"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for i in $(seq 1 300); do echo "to be or not to be, that is the question; whether 'tis nobler in the mind $i."; done >"$work/corpus.txt"
"$bin" prepare --input "$work/corpus.txt" --out "$work/data" >/dev/null
for case in 0:2 1:2 2:2 3:2 3:4; do
    stage=${case%:*} ranks=${case#*:}
    name="launch: $ranks MPI processes train like $ranks threads at ZeRO stage $stage"
    echo "test-mpi: running $name"
    # Stage 3 shards every group (the default persistence threshold would keep gpt-tiny's groups whole).
    printf '{"train_batch_size": 8, "gradient_accumulation_steps": 2, "zero_optimization": {"stage": %s, "stage3_param_persistence_threshold": 0}, "optimizer": {"type": "AdamW", "params": {"lr": 0.003}}}' "$stage" >"$work/ds$case.json"
    args=(train --model gpt-tiny --config "$work/ds$case.json" --data "$work/data" --steps 4 --seq-len 16 --eval-every 100 --eval-batches 1)
    "$bin" "${args[@]}" --out "$work/threads$case" --world-size "$ranks" >/dev/null 2>&1
    if ! timeout --kill-after=10 300 "$bin" launch --num_gpus "$ranks" -- "$bin" "${args[@]}" --out "$work/mpi$case" >"$work/log" 2>&1; then
        cat "$work/log"
        fail "$name (the launch failed)"
    elif [ "$(wc -l <"$work/mpi$case/metrics.csv")" -ne 5 ] || [ "$(wc -l <"$work/threads$case/metrics.csv")" -ne 5 ]; then
        fail "$name (a run did not write its 4 steps of metrics)"
    elif [ "$ranks" -eq 2 ] && diff <(cut -d, -f2,3,4 "$work/threads$case/metrics.csv") <(cut -d, -f2,3,4 "$work/mpi$case/metrics.csv"); then
        pass "$name"
    elif [ "$ranks" -gt 2 ] && paste -d, <(cut -d, -f2,4 "$work/threads$case/metrics.csv") <(cut -d, -f2,4 "$work/mpi$case/metrics.csv") |
        awk -F, 'NR > 1 { for (i = 1; i <= 2; i++) { d = $i - $(i + 2); if (d < 0) d = -d; if (d > 1e-5 * $i) { print "row " NR ": " $0; bad = 1 } } } END { exit bad }'; then
        # Over more than two ranks MPI sums in another order than the threads backend: the same losses and
        # gradient norms to 1e-5 relative (fp32 reduction order).
        pass "$name"
    else
        fail "$name (losses differ, shown above)"
    fi
done

echo "test-mpi: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
