#!/usr/bin/env bash
# Encode a corpus, then the queries, into embedding shards: a Ray Data actor pool, one model copy per GPU.
#   RUN=my-run CORPUS=Tevatron/msmarco-passage-corpus QUERIES=Tevatron/msmarco-passage QUERY_SPLIT=dev \
#     jobs/encode.sh [raytev encode flags...]
# MODEL        the encoder (default: $RAYTEV_STORAGE/$RUN/model, what jobs/finetune.sh wrote)
# CORPUS       passages: a Hugging Face name or a file/folder on the shared filesystem (a BEIR folder: its corpus)
# QUERIES      the queries to encode (default: CORPUS, e.g. the same BEIR folder); QUERY_SPLIT their split
# Writes $RAYTEV_STORAGE/$RUN/corpus and .../queries. An interrupted encoding resumes: run the same command again.
# Extra flags go to both commands: --passage_max_len 256, --per_device_eval_batch_size 512, ...
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${RUN:?set RUN: the run name}" "${CORPUS:?set CORPUS: the passages to encode}"
MODEL="${MODEL:-$STORAGE/$RUN/model}"

submit python -m raytev encode \
  --model_name_or_path "$MODEL" --dataset_name "$CORPUS" \
  --encode_output_path "$STORAGE/$RUN/corpus" \
  --num_actors "$NUM_GPUS" --use_gpu --bf16 --per_device_eval_batch_size 256 \
  "$@"
submit python -m raytev encode \
  --model_name_or_path "$MODEL" --dataset_name "${QUERIES:-$CORPUS}" --dataset_split "${QUERY_SPLIT:-test}" \
  --encode_is_query --encode_output_path "$STORAGE/$RUN/queries" \
  --num_actors 1 --use_gpu --bf16 --per_device_eval_batch_size 256 \
  "$@"
