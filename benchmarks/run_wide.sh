#!/usr/bin/env bash
# The all-reduce tables at many ranks, one rank a core (no oversubscription),
# for a machine with the cores for it:
#   RANKS="8 16" OUT=/tmp/wide benchmarks/run_wide.sh
# Default and tuned malloc at each rank count, every table under its own time
# limit so that a slow one cannot take the others' time, and each written to
# OUT as it goes.  `cma` is left out where process_vm_readv is refused (a
# sandbox such as gVisor); `auto` then skips it by itself.
set -uo pipefail
LIMIT="${LIMIT:-150}"   # seconds per table
source "$(dirname "$0")/_bench.sh"
OUT="${OUT:-$ROOT/benchmarks/results-wide}"
REPEATS="${REPEATS:-5}"
RANKS="${RANKS:-8 16}"
SIZES="${SIZES:-8:64M}"
ALLREDUCE="${ALLREDUCE:-mpi,ring,pipelined,shm,cma,hierarchical,auto}"
mkdir -p "$OUT"
failed=()

{   # the machine
    echo "## machine (load: $(cut -d' ' -f1-3 /proc/loadavg))"
    lscpu | grep -E "Model name|CPU family|^Model:|^CPU\(s\)|Thread|Core|Socket|L2|L3|NUMA node\(s\)|Hypervisor"
    echo "nproc: $(nproc)  AVX-512: $(grep -q -w avx512f /proc/cpuinfo && echo yes || echo no)"
    free -g | head -2
    "$VENV/bin/mpichversion" 2>/dev/null | head -2 || true
    "$PY" -c "from mpi4py import MPI; import mpi4py, numpy, numba, sys; \
print('MPI:', MPI.Get_library_version().splitlines()[0]); \
print('python', sys.version.split()[0], 'mpi4py', mpi4py.__version__, 'numpy', numpy.__version__, 'numba', numba.__version__)"
    uname -sr
} 2>&1 | tee "$OUT/machine.txt"

if ! bench 2 allreduce -m 1M:1M -r 1 -x 1 -i 3 -c -a cma > "$OUT/cma-probe.txt" 2>&1; then
    echo "# cma unusable here (see cma-probe.txt): left out" | tee -a "$OUT/machine.txt"
    ALLREDUCE="$(echo ",$ALLREDUCE," | sed 's/,cma,/,/; s/^,//; s/,$//')"
fi

top="${RANKS##* }"
for n in 1 "$top"; do
    bench "$n" membw -m 64M -r 5 --json "$OUT/membw-$n.json" | tee "$OUT/membw-$n.txt" \
        || failed+=("membw-$n")
done

for malloc in default tuned; do
    if [ "$malloc" = tuned ]; then export GLIBC_TUNABLES="$TUNED"; else unset GLIBC_TUNABLES; fi
    for n in $RANKS; do
        name="allreduce-$n-$malloc"
        echo "## $name (load: $(cut -d' ' -f1-3 /proc/loadavg))"
        bench "$n" allreduce -m "$SIZES" -r "$REPEATS" -c -a "$ALLREDUCE" \
            --json "$OUT/$name.json" 2>&1 | tee "$OUT/$name.txt" || failed+=("$name")
    done
done
unset GLIBC_TUNABLES
for n in $RANKS; do
    for malloc in default tuned; do
        name="allreduce-$n-$malloc"
        [ -f "$OUT/$name.json" ] && "$PY" -m benchmarks.summary table "$OUT/$name.json" \
            > "$OUT/$name.table.md"
    done
done
if [ "${#failed[@]}" -gt 0 ]; then
    echo "FAILED (validation or time limit): ${failed[*]}" >&2
    exit 1
fi
