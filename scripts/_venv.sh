# Sourced by scripts/demo and scripts/test: make .venv if missing, install.
# MPI comes from PyPI's mpich wheel (the "mpich" extra), so a fresh machine
# needs no system MPI.  VENV overrides the location.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
export NUMBA_NUM_THREADS=1

ensure_venv() {  # ensure_venv EXTRAS
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
    fi
    "$VENV/bin/python" -m pip install -q -e "$ROOT[$1]"
    # Compile and cache the Numba kernels once, not in every rank at once.
    "$VENV/bin/python" -c "import collectives"
}
