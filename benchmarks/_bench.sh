# Sourced by run_all.sh and run_wide.sh: the venv, the tuned malloc setting,
# and bench(), the benchmark CLI under mpiexec with a time limit.  The caller
# sets LIMIT (seconds per command) first; VENV overrides the venv.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
TUNED="glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"
export NUMBA_NUM_THREADS=1 PYTHONUNBUFFERED=1

bench() {  # bench NRANKS ARGS...
    local n="$1"; shift
    timeout -k 10 "$LIMIT" "$VENV/bin/mpiexec" -n "$n" "$PY" -m mpi4py -m benchmarks.collectives "$@"
}
