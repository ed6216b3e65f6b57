#!/usr/bin/env bash
# Tevatron's replication of DPR on Natural Questions: bert-base-uncased on Tevatron/wikipedia-nq (one positive and
# one hard negative per question, negatives shared across GPUs), the 21M-passage Wikipedia corpus encoded and
# searched with the test questions, scored by top-k answer accuracy.
#   jobs/nq_dpr.sh                       # every stage: data train encode index search eval
#   TRAIN_GPUS=1 jobs/nq_dpr.sh          # the single-GPU variant (GradCache)
#   STAGES="eval" jobs/nq_dpr.sh
# Outputs under $RAYTEV_STORAGE/nq-dpr.
#
# Hyper-parameters: Tevatron's examples/example_dpr.md at commit d0edcd5cd945d79840a448aae05987812f54a8f1
# (texttron/tevatron, v1 flags): 4 GPUs x --per_device_train_batch_size 32 with --negatives_x_device,
# --train_n_passages 2, --positive_passage_no_shuffle, --learning_rate 1e-5, --q_max_len 32, --p_max_len 156,
# --num_train_epochs 40, --fp16, --save_steps 20000, --logging_steps 500; or on one GPU batch 128 with --grad_cache.
# The corpus and the test questions are encoded with Tevatron's default lengths (128 and 32), batch 156, and
# searched to depth 100. Reported: Top20 0.81, Top100 0.86 (untied encoders, --untie_encoder: 0.80 / 0.87).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
RUN_DIR="$STORAGE/nq-dpr"
TEST_QUESTIONS="$DATA/nq/test.jsonl"
CORPUS_FILE="$DATA/nq/corpus.jsonl"

case "${TRAIN_GPUS:-4}" in
  # cross_worker_negatives is raytev's default (Tevatron's --negatives_x_device).
  4) layout=(--num_workers 4 --per_device_train_batch_size 32) ;;
  1) layout=(--num_workers 1 --per_device_train_batch_size 128 --grad_cache) ;;
  *) echo "TRAIN_GPUS must be 4 (the paper's) or 1 (GradCache), got $TRAIN_GPUS" >&2; exit 2 ;;
esac

if stage data; then
  # QA evaluation reads answers and passage texts from files: the test questions (with answers) and the corpus.
  submit python jobs/export_hf.py jsonl --dataset_name Tevatron/wikipedia-nq --dataset_split test \
    --columns query_id,query,answers --output "$TEST_QUESTIONS"
  submit python jobs/export_hf.py jsonl --dataset_name Tevatron/wikipedia-nq-corpus --output "$CORPUS_FILE"
fi
if stage train; then
  submit python -m raytev train \
    --model_name_or_path bert-base-uncased --dataset_name Tevatron/wikipedia-nq \
    --output_dir "$RUN_DIR/model" --storage_path "$CHECKPOINTS" \
    "${layout[@]}" --use_gpu --fp16 --train_group_size 2 --positive_passage_no_shuffle \
    --learning_rate 1e-5 --query_max_len 32 --passage_max_len 156 --num_train_epochs 40 \
    --save_steps 20000 --logging_steps 500
fi
if stage encode; then
  submit python -m raytev encode \
    --model_name_or_path "$RUN_DIR/model" --dataset_name Tevatron/wikipedia-nq-corpus \
    --passage_max_len 128 --encode_output_path "$RUN_DIR/corpus" \
    --fp16 --per_device_eval_batch_size 156 --num_actors "$NUM_GPUS" --use_gpu
  submit python -m raytev encode \
    --model_name_or_path "$RUN_DIR/model" --dataset_name Tevatron/wikipedia-nq --dataset_split test \
    --encode_is_query --query_max_len 32 --encode_output_path "$RUN_DIR/test_queries" \
    --fp16 --per_device_eval_batch_size 156 --num_actors 1 --use_gpu
fi
if stage index; then
  submit python -m raytev index --passage_reps "$RUN_DIR/corpus" --index_output_path "$RUN_DIR/index"
fi
if stage search; then
  submit python -m raytev search \
    --query_reps "$RUN_DIR/test_queries" --passage_reps "$RUN_DIR/index" --depth 100 --batch_size -1 \
    --save_ranking_to "$RUN_DIR/test.run.txt"
fi
if stage eval; then
  submit python -m raytev eval --run "$RUN_DIR/test.run.txt" \
    --qa_answers "$TEST_QUESTIONS" --qa_corpus "$CORPUS_FILE" --top_k 20,100
fi
