# Settings the recipes in jobs/ share; each recipe sources this file. Override any of them in the environment.
# shellcheck shell=bash
set -euo pipefail
# `ray job submit --working-dir .` uploads the current directory: the recipes run from the repository root.
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# The cluster's dashboard: `ray dashboard clusters/aws-gpu.yaml` (or `kubectl port-forward svc/raytev-head-svc
# 8265:8265`) forwards it here.
export RAY_ADDRESS="${RAY_ADDRESS:-http://127.0.0.1:8265}"
# The clusters in clusters/ run with token authentication: the CLI sends RAY_AUTH_TOKEN, or ~/.ray/auth_token.
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"

# Every stage reads its inputs from, and writes its outputs to, a filesystem mounted at the same path on every node
# (EFS, Filestore, a ReadWriteMany volume): the driver runs on the head, but Ray Data tasks, training workers and
# encoding actors on the GPU nodes read the token cache and the model from it. The paths are absolute because a
# job's working directory is a temporary copy that Ray deletes.
STORAGE="${RAYTEV_STORAGE:-/mnt/cluster_storage/raytev}"
# Training checkpoints (raytev train --storage_path): the shared folder, or an object store URI
# (s3://bucket/raytev, gs://bucket/raytev) when the nodes hold credentials for it. The other stages' outputs
# (the model, embeddings, the index, runs) are local paths to raytev, so they stay on the shared filesystem.
CHECKPOINTS="${RAYTEV_CHECKPOINTS:-$STORAGE/checkpoints}"
# Input files the recipes export from Hugging Face or that you put there (qrels, corpora for QA evaluation).
DATA="${RAYTEV_DATA:-/mnt/cluster_storage/data}"
# GPUs to spread encoding over (one actor each; the autoscaler starts the nodes).
NUM_GPUS="${NUM_GPUS:-4}"
# Which stages a paper recipe runs, in order; e.g. STAGES="search eval" after the rest finished.
STAGES="${STAGES:-}"

# Submit one command as a Ray job and wait for it; a failed job stops the recipe (set -e).
# Ray joins the command's words into one shell line on the head (subprocess.list2cmdline): keep $, quotes and
# glob characters out of the arguments.
submit() {
  ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- "$@"
}

# Whether a paper recipe runs this stage: all of them unless STAGES names some.
stage() {
  [[ -z "$STAGES" || " $STAGES " == *" $1 "* ]]
}

# The MS MARCO passage dev evaluation both MS MARCO recipes end with, each step a stage: encode the 8.8M-passage
# corpus (one actor per GPU) and the dev queries with the model in $1 (batch $2), index exactly, search, score.
# Needs RUN_DIR and QRELS.
msmarco_dev_stages() {
  local model="$1" batch="$2"
  if stage encode; then
    submit python -m raytev encode \
      --model_name_or_path "$model" --dataset_name Tevatron/msmarco-passage-corpus \
      --passage_max_len 128 --encode_output_path "$RUN_DIR/corpus" \
      --fp16 --per_device_eval_batch_size "$batch" --num_actors "$NUM_GPUS" --use_gpu
    submit python -m raytev encode \
      --model_name_or_path "$model" --dataset_name Tevatron/msmarco-passage --dataset_split dev \
      --encode_is_query --query_max_len 32 --encode_output_path "$RUN_DIR/dev_queries" \
      --fp16 --per_device_eval_batch_size "$batch" --num_actors 1 --use_gpu
  fi
  if stage index; then
    submit python -m raytev index --passage_reps "$RUN_DIR/corpus" --index_output_path "$RUN_DIR/index"
  fi
  if stage search; then
    submit python -m raytev search \
      --query_reps "$RUN_DIR/dev_queries" --passage_reps "$RUN_DIR/index" --depth 1000 --batch_size -1 \
      --save_ranking_to "$RUN_DIR/dev.run.txt"
  fi
  if stage eval; then
    submit python -m raytev eval --run "$RUN_DIR/dev.run.txt" --qrels "$QRELS"
  fi
}
