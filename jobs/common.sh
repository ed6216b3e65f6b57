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
# MS MARCO recipes: 1 skips the index and searches the corpus embeddings one shard at a time (raytev search
# --shard_search: the same exact ranking in the memory of one shard). The LLM recipes set it: their 4096-dimensional
# vectors make a flat index of the 8.8M passages 144 GB, more than the head's memory.
SEARCH_SHARDS="${SEARCH_SHARDS:-}"

# Submit one command as a Ray job and wait for it; a failed job stops the recipe (set -e).
# Ray joins the command's words into one shell line on the head (subprocess.list2cmdline): keep $, quotes,
# backslashes and glob characters out of the arguments. Spaces are fine (a prompt such as "Query: "):
# list2cmdline puts such a word in double quotes, which the head's shell removes.
submit() {
  ray job submit --working-dir . --runtime-env jobs/runtime_env.yaml -- "$@"
}

# Whether a paper recipe runs this stage: all of them unless STAGES names some.
stage() {
  [[ -z "$STAGES" || " $STAGES " == *" $1 "* ]]
}

# The data stage of the MS MARCO recipes: the dev qrels (to $QRELS), from the dev split's positive passages (MS
# MARCO's qrels.dev.small.tsv works the same).
msmarco_dev_qrels() {
  if stage data; then
    submit python jobs/export_hf.py qrels --dataset_name Tevatron/msmarco-passage --dataset_split dev \
      --output "$QRELS"
  fi
}

# The LLM recipes' training layout: TRAIN_GPUS workers keep Tevatron's 128 queries per optimizer step (8 per worker
# and micro-batch, 16 / TRAIN_GPUS micro-batches), with the model sharded (FSDP) when there are several. Sets the
# array `layout`.
llm_training_layout() {
  if ! [[ "$TRAIN_GPUS" =~ ^[0-9]+$ ]] || ((TRAIN_GPUS < 1 || 16 % TRAIN_GPUS)); then
    echo "TRAIN_GPUS must divide 16 (1, 2, 4, 8 or 16) to keep 128 queries per step, got $TRAIN_GPUS" >&2
    exit 2
  fi
  layout=(--num_workers "$TRAIN_GPUS" --gradient_accumulation_steps $((16 / TRAIN_GPUS)))
  ((TRAIN_GPUS == 1)) || layout+=(--fsdp)
}

# The MS MARCO passage dev evaluation the MS MARCO recipes end with, each step a stage: encode the 8.8M-passage
# corpus (one actor per GPU) and the dev queries with the model in $1 (batch $2 per actor), index exactly (unless
# SEARCH_SHARDS), search, score. The flags after $2 go to both encode commands: the precision and how the model
# reads text (lengths, and for LLM retrievers the adapter, pooling, prompts and EOS); without any, the BERT
# recipes' --fp16 with queries cut at 32 tokens and passages at Tevatron's 128. Needs RUN_DIR and QRELS.
msmarco_dev_stages() {
  local model="$1" batch="$2"
  shift 2
  local flags=("$@")
  ((${#flags[@]})) || flags=(--fp16 --query_max_len 32 --passage_max_len 128)
  if stage encode; then
    submit python -m raytev encode \
      --model_name_or_path "$model" --dataset_name Tevatron/msmarco-passage-corpus \
      --encode_output_path "$RUN_DIR/corpus" \
      --per_device_eval_batch_size "$batch" --num_actors "$NUM_GPUS" --use_gpu "${flags[@]}"
    submit python -m raytev encode \
      --model_name_or_path "$model" --dataset_name Tevatron/msmarco-passage --dataset_split dev \
      --encode_is_query --encode_output_path "$RUN_DIR/dev_queries" \
      --per_device_eval_batch_size "$batch" --num_actors 1 --use_gpu "${flags[@]}"
  fi
  local passages=(--passage_reps "$RUN_DIR/index")
  if [[ -n "$SEARCH_SHARDS" && "$SEARCH_SHARDS" != 0 ]]; then
    passages=(--passage_reps "$RUN_DIR/corpus" --shard_search)
  elif stage index; then
    submit python -m raytev index --passage_reps "$RUN_DIR/corpus" --index_output_path "$RUN_DIR/index"
  fi
  if stage search; then
    submit python -m raytev search \
      --query_reps "$RUN_DIR/dev_queries" "${passages[@]}" --depth 1000 --batch_size -1 \
      --save_ranking_to "$RUN_DIR/dev.run.txt"
  fi
  if stage eval; then
    submit python -m raytev eval --run "$RUN_DIR/dev.run.txt" --qrels "$QRELS"
  fi
}
