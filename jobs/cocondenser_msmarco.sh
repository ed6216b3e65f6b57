#!/usr/bin/env bash
# Tevatron's coCondenser recipe on MS MARCO passage: fine-tune the coCondenser checkpoint on BM25 negatives
# (stage 1), mine hard negatives with that model, fine-tune the checkpoint again on BM25 + mined negatives
# (stage 2), then encode, index, search the dev queries and score.
#   jobs/cocondenser_msmarco.sh          # stages: data train1 mine train2 encode index search eval
#   STAGES="train2 encode index search eval" jobs/cocondenser_msmarco.sh
# Outputs under $RAYTEV_STORAGE/cocondenser-msmarco (s1/, train-hn.jsonl, s2/, corpus/, dev_queries/, index/, ...).
#
# Hyper-parameters: Tevatron's examples/coCondenser-marco/README.md at commit
# a26e013ea4af437d5f3b4b8e88aab0986200d6a7 (texttron/tevatron, v1 flags). Both stages start from the pre-trained
# coCondenser (Luyu/co-condenser-marco, CONDENSER_MODEL_NAME there), with --per_device_train_batch_size 8,
# --learning_rate 5e-6, --fp16, --save_steps 20000, and Tevatron v1's defaults for the rest (src/tevatron/
# arguments.py: --train_n_passages 8, --q_max_len 32, --p_max_len 128, warmup ratio 0.1), written out here;
# --num_train_epochs 3 for stage 1, 2 for stage 2. Encoding: batch 128, queries at --q_max_len 32.
# Mined negatives: examples/coCondenser-marco/build_train_hn.py at commit 11d2c544754986085a90a68827a68d32c5ec7c45
# samples --n_sample 63 from the top --depth 200 non-positive passages; stage 2 trains on those groups and the
# stage-1 (BM25) groups together (create_hn.sh links both into one folder), as raytev mine's
# --keep_original_groups (its default) writes them.
# Data: Tevatron builds its files from RocketQA's MS MARCO corpus (with titles) and MS MARCO's BM25 triples
# (get_data.sh); here the hub's Tevatron/msmarco-passage and Tevatron/msmarco-passage-corpus stand in for them.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
RUN_DIR="$STORAGE/cocondenser-msmarco"
QRELS="$DATA/msmarco/qrels.dev.tsv"
CORPUS_FILE="$DATA/msmarco/corpus.jsonl"

msmarco_dev_qrels
if stage data; then
  # raytev mine reads the passages it retrieves from a corpus file (--corpus_path).
  submit python jobs/export_hf.py jsonl --dataset_name Tevatron/msmarco-passage-corpus --output "$CORPUS_FILE"
fi
if stage train1; then
  submit python -m raytev train \
    --model_name_or_path Luyu/co-condenser-marco --dataset_name Tevatron/msmarco-passage \
    --output_dir "$RUN_DIR/s1" --storage_path "$CHECKPOINTS" \
    --fp16 --per_device_train_batch_size 8 --train_group_size 8 --learning_rate 5e-6 \
    --query_max_len 32 --passage_max_len 128 --num_train_epochs 3 \
    --save_steps 20000 --num_workers 1 --use_gpu
fi
if stage mine; then
  submit python -m raytev mine \
    --model_name_or_path "$RUN_DIR/s1" --dataset_name Tevatron/msmarco-passage --corpus_path "$CORPUS_FILE" \
    --save_to "$RUN_DIR/train-hn.jsonl" --negative_rank_start 1 --negative_rank_end 200 --n_sample 63 \
    --query_max_len 32 --passage_max_len 128 \
    --fp16 --per_device_eval_batch_size 128 --num_actors "$NUM_GPUS" --use_gpu
fi
if stage train2; then
  submit python -m raytev train \
    --model_name_or_path Luyu/co-condenser-marco --dataset_path "$RUN_DIR/train-hn.jsonl" \
    --output_dir "$RUN_DIR/s2" --storage_path "$CHECKPOINTS" \
    --fp16 --per_device_train_batch_size 8 --train_group_size 8 --learning_rate 5e-6 \
    --query_max_len 32 --passage_max_len 128 --num_train_epochs 2 \
    --save_steps 20000 --num_workers 1 --use_gpu
fi
msmarco_dev_stages "$RUN_DIR/s2" 128
