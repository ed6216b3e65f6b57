#!/usr/bin/env bash
# Tevatron's MS MARCO passage setup: bert-base-uncased fine-tuned on Tevatron/msmarco-passage (BM25 negatives),
# then the 8.8M-passage corpus encoded, indexed (exact), searched with the dev queries, and scored.
#   jobs/msmarco_bert_base.sh                      # every stage, one job each, in order
#   STAGES="search eval" jobs/msmarco_bert_base.sh  # some of them: data train encode index search eval
# Outputs under $RAYTEV_STORAGE/msmarco-bert-base (model/, corpus/, dev_queries/, index/, dev.run.txt).
#
# Hyper-parameters: Tevatron's examples/example_msmarco.md at commit 04eaa63a3bcc50a0c2c6c619ceac2992e4ae6f5c
# (texttron/tevatron, the v1 flags of the paper's time): one GPU, --per_device_train_batch_size 8,
# --train_n_passages 8, --learning_rate 5e-6, --q_max_len 16, --p_max_len 128, --num_train_epochs 3, --fp16,
# --save_steps 20000, --logging_steps 500; corpus encoded with --p_max_len 128 and batch 156, dev queries with
# --q_max_len 32 (longer than in training, as there); reported MRR@10 0.322 on the dev set. (Tevatron's later
# version of that page, commit d1816cfccf41fc55859a0831b7db1e4ab5f087a6, uses --learning_rate 1e-5.)
# Everything else is Tevatron's default, which raytev shares: warmup ratio 0.1, CLS pooling, no normalization,
# temperature 1, tied encoder. Tevatron searched to depth 100; depth 1000 here also gives R@1000 (MRR@10 is the same).
# One training worker keeps the paper's batch: with N workers each query also meets the other workers' passages
# (cross-worker negatives) and the global batch is 8 x N.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
RUN_DIR="$STORAGE/msmarco-bert-base"
QRELS="$DATA/msmarco/qrels.dev.tsv"

msmarco_dev_qrels
if stage train; then
  submit python -m raytev train \
    --model_name_or_path bert-base-uncased --dataset_name Tevatron/msmarco-passage \
    --output_dir "$RUN_DIR/model" --storage_path "$CHECKPOINTS" \
    --fp16 --per_device_train_batch_size 8 --train_group_size 8 --learning_rate 5e-6 \
    --query_max_len 16 --passage_max_len 128 --num_train_epochs 3 \
    --save_steps 20000 --logging_steps 500 --num_workers 1 --use_gpu
fi
msmarco_dev_stages "$RUN_DIR/model" 156
