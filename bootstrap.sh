#!/usr/bin/env bash
# Set up (or reuse) a virtualenv with everything raytev needs, then run the demo or the tests.
#   ./bootstrap.sh demo          the main job, offline, on the bundled SciFact and all-MiniLM-L6-v2
#   ./bootstrap.sh test [ARGS]   the test suite (ARGS go to pytest)
# RAYTEV_VENV chooses the virtualenv folder (default .venv); PYTHON the interpreter that creates it.
set -euo pipefail
cd "$(dirname "$0")"
venv="${RAYTEV_VENV:-.venv}"
[ -x "$venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$venv"
py="$venv/bin/python"

# torch first, pinned: where no torch is installed, an unpinned requirement pulls the newest build with
# several GB of CUDA packages (DEVELOPERS.md). An existing torch is kept.
"$py" -c "import torch" 2>/dev/null || "$py" -m pip install --quiet "torch==2.13.0"

# Install the project when pyproject.toml changed since the last install into this virtualenv. One faiss per install
# (README.md, Install): the cpu extra, unless the GPU build is here already (kept, as torch is: adding faiss-cpu to
# it would mix two wheels in one faiss/ folder).
stamp="$venv/.raytev-installed"
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  faiss=cpu
  "$py" -m pip show faiss-gpu-cu12 >/dev/null 2>&1 && faiss=gpu
  "$py" -m pip install --quiet --disable-pip-version-check -e ".[$faiss,demo,dev,jax]"
  echo "$want" > "$stamp"
fi

case "${1:-}" in
  demo)
    shift
    exec "$venv/bin/raytev" demo "$@"
    ;;
  test)
    shift
    exec "$py" -m pytest "$@"
    ;;
  *)
    echo "usage: ./bootstrap.sh demo | test [pytest args]" >&2
    exit 2
    ;;
esac
