#!/usr/bin/env bash
# The Tevatron paper's TPU setup: DPR on Natural Questions trained with raytev's JAX backend on one TPU host (a
# v3-8 or v4-8; clusters/gcp-tpu.yaml, or clusters/kuberay/rayjob-train-tpu.yaml for the training stage alone),
# then the 21M-passage Wikipedia corpus encoded on the TPU hosts, searched with the test questions and scored by
# top-k answer accuracy, as jobs/nq_dpr.sh does on GPUs.
#   jobs/nq_dpr_tpu.sh                        # every stage: data train encode index search eval
#   TPU_HOSTS=4 STAGES="encode" jobs/nq_dpr_tpu.sh   # spread encoding over 4 TPU hosts
#   STAGES="search eval" jobs/nq_dpr_tpu.sh
# Outputs under $RAYTEV_STORAGE/nq-dpr-tpu; the data stage's files are nq_dpr.sh's (either recipe reuses them).
#
# Hyper-parameters: nq_dpr.sh's (Tevatron's examples/example_dpr.md, v1 flags) with the global batch of 128
# questions on one TPU host instead of 4 GPUs x 32: --num_workers 1 (one worker is one TPU host with all its
# chips) and --per_device_train_batch_size 128 (the questions per host per step, split over its chips),
# --train_n_passages 2 (--train_group_size), --positive_passage_no_shuffle, --learning_rate 1e-5, --q_max_len 32,
# --p_max_len 156, --num_train_epochs 40, bf16 (the TPU's own precision) instead of fp16, --save_steps 20000,
# --logging_steps 500. The Tevatron paper (Gao et al., 2022) reports this training taking about 1 hour on a v3-8.
# Encoding uses Tevatron's lengths (128 and 32); its batch is per actor, that is per TPU host: 1248 is nq_dpr.sh's
# 156 per GPU for each of a v3-8's 8 cores (312 per chip of a v4-8). Search depth 100, as nq_dpr.sh.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
RUN_DIR="$STORAGE/nq-dpr-tpu"
TEST_QUESTIONS="$DATA/nq/test.jsonl"
CORPUS_FILE="$DATA/nq/corpus.jsonl"
# TPU hosts to spread the corpus encoding over (one actor each, with all the host's chips).
TPU_HOSTS="${TPU_HOSTS:-1}"
# --backend jax --use_tpu: every training worker and encoding actor takes one TPU host (Ray's "TPU" resource).
tpu=(--backend jax --use_tpu --bf16)

if stage data; then
  # QA evaluation reads answers and passage texts from files: the test questions (with answers) and the corpus.
  submit python jobs/export_hf.py jsonl --dataset_name Tevatron/wikipedia-nq --dataset_split test \
    --columns query_id,query,answers --output "$TEST_QUESTIONS"
  submit python jobs/export_hf.py jsonl --dataset_name Tevatron/wikipedia-nq-corpus --output "$CORPUS_FILE"
fi
if stage train; then
  submit python -m raytev train "${tpu[@]}" \
    --model_name_or_path bert-base-uncased --dataset_name Tevatron/wikipedia-nq \
    --output_dir "$RUN_DIR/model" --storage_path "$CHECKPOINTS" \
    --num_workers 1 --per_device_train_batch_size 128 --train_group_size 2 --positive_passage_no_shuffle \
    --learning_rate 1e-5 --query_max_len 32 --passage_max_len 156 --num_train_epochs 40 \
    --save_steps 20000 --logging_steps 500
fi
if stage encode; then
  submit python -m raytev encode "${tpu[@]}" \
    --model_name_or_path "$RUN_DIR/model" --dataset_name Tevatron/wikipedia-nq-corpus \
    --passage_max_len 128 --encode_output_path "$RUN_DIR/corpus" \
    --per_device_eval_batch_size 1248 --num_actors "$TPU_HOSTS"
  submit python -m raytev encode "${tpu[@]}" \
    --model_name_or_path "$RUN_DIR/model" --dataset_name Tevatron/wikipedia-nq --dataset_split test \
    --encode_is_query --query_max_len 32 --encode_output_path "$RUN_DIR/test_queries" \
    --per_device_eval_batch_size 1248 --num_actors 1
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
