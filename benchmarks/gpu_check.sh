#!/usr/bin/env bash
# The GPU check: on a one-GPU machine that has this project's files, set up a virtualenv with CUDA torch, faiss-gpu
# and jax[cuda12], then run benchmarks/gpu_check.py (raytev's CUDA paths at small sizes, one table of figures).
#
#   benchmarks/gpu_check.sh                         create or reuse .venv-gpu, install, run every check
#   benchmarks/gpu_check.sh --no-install            use $PYTHON (default python3) as it is (raytev importable)
#   benchmarks/gpu_check.sh --wheels DIR            install offline, from a folder of wheels
#   benchmarks/gpu_check.sh --cpu                   CPU wheels and CPU-only checks: tests this script without a GPU
#   benchmarks/gpu_check.sh --dry-run               print the set-up commands instead of running anything
#   benchmarks/gpu_check.sh -- --only doctor,...    what follows -- goes to gpu_check.py (see its --help)
#
# RAYTEV_GPU_VENV names the virtualenv (default .venv-gpu), PYTHON the interpreter that creates it,
# RAYTEV_TORCH_INDEX the index CUDA torch comes from (default CUDA 12.6 builds, which match faiss-gpu-cu12's CUDA 12).
# The venv uses --system-site-packages, so a machine image that already holds CUDA torch or jax keeps them.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }

install=1 cpu=0 dry_run=0 wheels=""
check_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --no-install) install=0 ;;
    --cpu) cpu=1 ;;
    --dry-run) dry_run=1 ;;
    --wheels) [ $# -ge 2 ] || { echo "gpu_check.sh: --wheels needs a folder" >&2; exit 2; }
              wheels="$2"; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; check_args+=("$@"); break ;;
    *) echo "gpu_check.sh: unknown argument '$1' (arguments for gpu_check.py go after --)" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
if [ -n "$wheels" ] && [ ! -d "$wheels" ]; then
  echo "gpu_check.sh: --wheels $wheels is not a folder" >&2; exit 2
fi

venv="${RAYTEV_GPU_VENV:-.venv-gpu}"
torch_index="${RAYTEV_TORCH_INDEX:-https://download.pytorch.org/whl/cu126}"
pip_source=()
[ -n "$wheels" ] && pip_source=(--no-index --find-links "$wheels")

# The set-up, one command a line: CUDA torch unless the interpreter has a CUDA (or, with --cpu, any) torch already;
# raytev with exactly one faiss (the gpu extra, or cpu); jax with its CUDA plugin.
setup_commands() {
  local py="$venv/bin/python"
  echo "${PYTHON:-python3} -m venv --system-site-packages $venv"
  if [ "$cpu" = 1 ]; then
    echo "$py -c 'import torch' || $py -m pip install ${pip_source[*]} torch==2.13.0"
    echo "$py -m pip install ${pip_source[*]} -e .[cpu,jax]"
  else
    local index=(--index-url "$torch_index")
    [ -n "$wheels" ] && index=("${pip_source[@]}")
    echo "$py -c 'import torch; assert torch.version.cuda' || $py -m pip install ${index[*]} torch"
    echo "$py -m pip install ${pip_source[*]} -e .[gpu,jax] jax[cuda12]"
  fi
}

if [ "$dry_run" = 1 ]; then
  if [ "$install" = 1 ]; then setup_commands; fi
  echo "${PYTHON:-python3} benchmarks/gpu_check.py $([ "$cpu" = 1 ] && echo --cpu) ${check_args[*]}"
  exit 0
fi

py="${PYTHON:-python3}"
if [ "$install" = 1 ]; then
  while IFS= read -r command; do
    echo "+ $command"
    bash -c "$command"
  done < <(setup_commands)
  py="$venv/bin/python"
fi

# The check's own output is the record: unbuffered, so a run cut short still shows how far it got. JAX would take
# 75% of the GPU's memory at start; the checks share one GPU with torch processes, so it allocates as it goes.
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false XLA_PYTHON_CLIENT_PREALLOCATE=false
cpu_flag=()
[ "$cpu" = 1 ] && cpu_flag=(--cpu)
exec "$py" benchmarks/gpu_check.py "${cpu_flag[@]}" "${check_args[@]}"
