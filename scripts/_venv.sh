# Sourced by scripts/demo and scripts/test: make .venv if missing, install.
# MPI comes from PyPI's mpich wheel (the "mpich" extra), so a fresh machine
# needs no system MPI.  VENV overrides the location.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
export NUMBA_NUM_THREADS=1

make_venv() {  # make_venv DIR EXTRAS
    if [ ! -x "$1/bin/python" ]; then
        python3 -m venv "$1"
        "$1/bin/python" -m pip install -q --upgrade pip
    fi
    "$1/bin/python" -m pip install -q -e "$ROOT[$2]"
    # Compile and cache the Numba kernels once, not in every rank at once;
    # one worker a core (60 -> 34 s on 2 cores).
    "$1/bin/python" -c "import os; from collectives._compile import precompile; \
precompile(['collectives', 'optim'], processes=os.cpu_count() or 1)"
}

ensure_venv() {  # ensure_venv EXTRAS: the main venv, with MPICH
    make_venv "$VENV" "$1"
}
