#!/usr/bin/env bash
# Regenerate every number in BENCHMARKS.md into benchmarks/results/ (run it
# on a quiet machine: `uptime` is recorded next to each measurement).
#   benchmarks/run_all.sh              # everything, about 10-20 minutes on 2 cores
#   REPEATS=3 RANKS="2" benchmarks/run_all.sh    # quicker
# The tables in BENCHMARKS.md are include blocks refilled from the results
# at the end; the prose around them quotes numbers of the run it was written
# from, so read it again after a re-run.
set -euo pipefail
LIMIT="${LIMIT:-1800}"   # seconds per command
source "$(dirname "$0")/_bench.sh"
OUT="${OUT:-$ROOT/benchmarks/results}"
REPEATS="${REPEATS:-7}"
RANKS="${RANKS:-2 4}"
SIZES="${SIZES:-8:64M}"
# every algorithm, "shm-streaming" (one of auto's candidates with no algorithm
# name of its own), and "auto" on a collectives.shared_array (zero-copy)
ALLREDUCE="mpi,ring,pipelined,tree,rd,shm,shm-streaming,cma,hierarchical,auto,auto-shared"
mkdir -p "$OUT"
failed=()

log() {  # a section header with the load and what else is using the CPU right now
    echo "## $* (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    top -bn2 -d0.5 | awk '/^top -/{n++} n==2 && $1 ~ /^[0-9]+$/ && $9+0 >= 10 {print "#   busy:", $9"%", $12}'
}

{   # the machine
    log "machine"
    lscpu | grep -E "Model name|CPU family|^Model:|^CPU\(s\)|Thread|Core|Socket|L2|L3|NUMA node\(s\)|Hypervisor"
    echo "AVX-512: $(grep -q -w avx512f /proc/cpuinfo && echo yes || echo no)"
    free -g | head -2
    "$VENV/bin/mpichversion" | head -4 || true
    "$VENV/bin/mpivars" 2>/dev/null | grep -E "^\s*MPIR_CVAR_CH4_(CMA_ENABLE|IPC_CMA_P2P_THRESHOLD)\s*=" \
        | sed -E 's/^\s+//; s/\s+SCOPE.*//; s/\s*=\s*/=/' || true
    "$PY" -c "from mpi4py import MPI; import mpi4py, numpy, numba; \
print('MPI.Get_library_version():', MPI.Get_library_version().splitlines()[0]); \
print('mpi4py', mpi4py.__version__, 'numpy', numpy.__version__, 'numba', numba.__version__)"
    uname -sr
} | tee "$OUT/machine.txt"

log "kernels"
timeout "$LIMIT" "$PY" -m benchmarks.kernels -d all -r 21 \
    --json "$OUT/kernels.json" --markdown "$OUT/kernels.md" | tee "$OUT/kernels.txt"

for n in 1 2; do
    log "membw $n"
    bench "$n" membw -m 64M -r 11 --json "$OUT/membw-$n.json" \
        --markdown "$OUT/membw-$n.md" | tee "$OUT/membw-$n.txt"
done

log "pingpong"
bench 2 pingpong -m 1:64M -r "$REPEATS" --json "$OUT/pingpong-2.json" \
    --markdown "$OUT/pingpong-2.md" | tee "$OUT/pingpong-2.txt"

for n in $RANKS; do
    for malloc in default tuned; do
        log "allreduce $n ranks, $malloc malloc"
        if [ "$malloc" = tuned ]; then export GLIBC_TUNABLES="$TUNED"; else unset GLIBC_TUNABLES; fi
        name="allreduce-$n-$malloc"
        bench "$n" allreduce -m "$SIZES" -r "$REPEATS" -c -a "$ALLREDUCE" \
            --json "$OUT/$name.json" --markdown "$OUT/$name.md" | tee "$OUT/$name.txt" || failed+=("$name")
    done
    unset GLIBC_TUNABLES
    for malloc in default tuned; do
        name="allreduce-$n-$malloc"
        "$PY" -m benchmarks.summary table "$OUT/$name.json" > "$OUT/$name.table.md"
        "$PY" -m benchmarks.summary cost "$OUT/membw-2.json" "$OUT/$name.json" \
            > "$OUT/$name.cost.md"
    done
    "$PY" -m benchmarks.summary baseline "$OUT/allreduce-$n-default.json" \
        "$OUT/allreduce-$n-tuned.json" > "$OUT/baseline-$n.md"
done

for n in $RANKS; do  # each rank rewrites its buffer before every call, as in training
    log "allreduce $n ranks, rewritten buffers"
    name="allreduce-$n-rewrite"
    bench "$n" allreduce -m 1M:64M -r "$REPEATS" -c --rewrite \
        -a mpi,shm,shm-streaming,ring,cma,auto,auto-shared \
        --json "$OUT/$name.json" --markdown "$OUT/$name.md" | tee "$OUT/$name.txt" || failed+=("$name")
    "$PY" -m benchmarks.summary table "$OUT/$name.json" > "$OUT/$name.table.md"
done

for n in $RANKS; do  # auto against its candidates over a long run, as in training
    log "tuner $n ranks"
    timeout -k 10 "$LIMIT" "$VENV/bin/mpiexec" -n "$n" "$PY" -m mpi4py -m benchmarks.tuner \
        -m 1M:16M -c 400 --markdown "$OUT/tuner-$n.md" | tee "$OUT/tuner-$n.txt" \
        || failed+=("tuner-$n")
done

for c in reduce bcast; do
    log "$c 4 ranks"
    bench 4 "$c" -m 8:16M -r 3 -c --json "$OUT/$c-4.json" --markdown "$OUT/$c-4.md" \
        | tee "$OUT/$c-4.txt" || failed+=("$c-4")
done

if command -v strace >/dev/null; then  # MPI's per-call maps under both settings: a count
    log "malloc trace"
    timeout "$LIMIT" "$PY" -m benchmarks.malloc_trace -m 1M:64M \
        --markdown "$OUT/malloc-trace.md" | tee "$OUT/malloc-trace.txt" || failed+=("malloc-trace")
fi

plots=(); tuned=()
for n in $RANKS; do
    plots+=("$OUT/allreduce-$n-default.json"); tuned+=("$OUT/allreduce-$n-tuned.json")
done
"$PY" -m benchmarks.plot "${plots[@]}" --tuned "${tuned[@]}" -o "$OUT/allreduce_busbw.png"
if [ "$OUT" = "$ROOT/benchmarks/results" ]; then
    "$PY" -m benchmarks.summary update "$ROOT/BENCHMARKS.md"
fi
log "done"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED (validation or time limit): ${failed[*]}" >&2
    exit 1
fi
