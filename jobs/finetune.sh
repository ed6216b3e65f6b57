#!/usr/bin/env bash
# Fine-tune a dense retriever on the cluster's GPUs: Ray Train, one worker per GPU, gradients and in-batch
# negatives shared across workers.
#   MODEL=bert-base-uncased DATASET=Tevatron/msmarco-passage RUN=my-run jobs/finetune.sh [raytev train flags...]
# MODEL    a Hugging Face name, or a model folder on the shared filesystem
# DATASET  a Hugging Face name, or a path on the shared filesystem (Tevatron JSONL, a folder of them, a BEIR folder)
# RUN      names the folder $RAYTEV_STORAGE/$RUN; the model goes to its model/ folder
# TRAIN_GPUS  training workers (default 1); the global batch is TRAIN_GPUS x --per_device_train_batch_size
# Extra flags go to `raytev train` (later ones win): --learning_rate 2e-5 --num_train_epochs 1 ...
# Running the same command again resumes from the last checkpoint in $RAYTEV_CHECKPOINTS.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${MODEL:?set MODEL: the model to fine-tune}" "${DATASET:?set DATASET: the training data}" "${RUN:?set RUN: a name}"

# bf16 needs an Ampere or newer GPU (A10G, L4, A100, H100); on T4 or V100 pass --fp16 --bf16 false.
submit python -m raytev train \
  --model_name_or_path "$MODEL" --dataset_name "$DATASET" \
  --output_dir "$STORAGE/$RUN/model" --storage_path "$CHECKPOINTS" \
  --num_workers "${TRAIN_GPUS:-1}" --use_gpu --bf16 \
  "$@"
