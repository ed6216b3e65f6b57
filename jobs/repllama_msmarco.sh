#!/usr/bin/env bash
# RepLLaMA (Ma et al., 2023, "Fine-Tuning LLaMA for Multi-Stage Text Retrieval", arXiv:2310.08319) on MS MARCO
# passage as Tevatron main trains it: a 7B decoder LLM with LoRA adapters (base weights frozen), the EOS token's
# last hidden state as the embedding, normalized; then the 8.8M-passage corpus encoded with base model + adapter,
# searched exactly with the dev queries, and scored.
#   jobs/repllama_msmarco.sh                                        # every stage: data train encode search eval
#   TRAIN_GPUS=8 jobs/repllama_msmarco.sh                           # 8 training workers (an 8-GPU node)
#   BASE_MODEL=meta-llama/Llama-2-7b-hf jobs/repllama_msmarco.sh   # the paper's base model
#   STAGES="search eval" jobs/repllama_msmarco.sh
# Outputs under $RAYTEV_STORAGE/repllama-<base model> (model/ is the LoRA adapter; corpus/, dev_queries/,
# dev.run.txt). No index stage: 8.8M x 4096 float32 vectors would make a 144 GB flat index, more than the head's
# memory, so the search reads the corpus embeddings one shard at a time (--shard_search, the same exact ranking).
# Llama 2 is gated on the Hugging Face hub (Mistral's repositories may ask for the same): accept its licence and
# give the nodes a token (HF_TOKEN in their environment).
#
# Cluster: the training workers need GPUs with room for a 7B model: the 4-GPU worker type of
# clusters/aws-gpu.yaml (4x L40S 48 GB) or clusters/gcp-gpu.yaml (4x A100 80 GB), see jobs/README.md for the
# memory. Each worker asks for CPUS_PER_WORKER CPUs (default 10) with its GPU, more than a single-GPU worker type
# has (8), so the autoscaler starts the multi-GPU node rather than single-GPU ones. Encoding a 7B model in bf16
# (14 GB of weights) fits the 24 GB single-GPU workers: NUM_GPUS actors, batch 128 each.
#
# Hyper-parameters: Tevatron's README ("Tevatron 101", the PyTorch training and encoding commands) at commit
# 1a811b9f512c5a2c1cc5eccd7fd6dc8d981a0f8f (texttron/tevatron; the same training command as at commit
# 027d5cffd6381a95218877f928da2514a743f531): mistralai/Mistral-7B-v0.1 on Tevatron/msmarco-passage-aug (hard
# negatives from BM25's and coCondenser's top 200) with --lora --lora_target_modules
# q_proj,k_proj,v_proj,o_proj,down_proj,up_proj,gate_proj (Tevatron's defaults --lora_r 16 --lora_alpha 64
# --lora_dropout 0.1, written out here), --query_prefix "Query: " --passage_prefix "Passage: " --pooling eos
# --append_eos_token --normalize --temperature 0.01, --bf16 (weights loaded in bfloat16: --torch_dtype bfloat16
# here), --gradient_checkpointing, --per_device_train_batch_size 8 --gradient_accumulation_steps 4 on 4 GPUs
# (DeepSpeed ZeRO-3; FSDP2 here, --fsdp), --train_group_size 16, --learning_rate 1e-4, --query_max_len 32,
# --passage_max_len 156, --num_train_epochs 1, --save_steps 50, --logging_steps 10; warmup ratio 0.1 (Tevatron's
# default, and raytev's). Its encoding passes the same prefixes, pooling, EOS, normalization and lengths, bf16,
# batch 128, with --lora_name_or_path; search depth 1000. Reported there: MRR@10 42.3 on the dev set expected;
# "about 70 hours on 4xA6000", "about 110 hours on 1xA100". Tevatron's --overwrite_output_dir is left out:
# raytev's would discard the checkpoints a resubmitted job resumes from. Tevatron's attention default is
# flash_attention_2, which needs the flash-attn package; the image has none, so sdpa here.
# The batch: 8 queries x 16 passages per worker and micro-batch, negatives shared across workers (Tevatron gathers
# them across GPUs too): 8 x 4 x 16 = 512 passages per query on 4 workers; 128 queries per optimizer step, kept on
# any TRAIN_GPUS by the accumulation steps (16 / TRAIN_GPUS: 4 on 4 workers, 2 on 8, 16 on 1).
# The paper itself (examples/repllama/README.md there) trained meta-llama/Llama-2-7b-hf on Tevatron/msmarco-passage
# with LoRA r 32 on every projection but k_proj, lower-case "query: " / "passage: " prompts and 196-token passages;
# BASE_MODEL switches the base model only, the rest stays Tevatron main's.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BASE_MODEL="${BASE_MODEL:-mistralai/Mistral-7B-v0.1}"
TRAIN_GPUS="${TRAIN_GPUS:-4}"
CPUS_PER_WORKER="${CPUS_PER_WORKER:-10}"
base_name="$(printf %s "${BASE_MODEL##*/}" | tr "[:upper:]" "[:lower:]")"
RUN_DIR="$STORAGE/repllama-${base_name}"
QRELS="$DATA/msmarco/qrels.dev.tsv"
SEARCH_SHARDS=1  # no index stage (common.sh)

# FSDP shards the frozen 14 GB of bf16 weights (and the adapters' optimizer state) across the workers.
llm_training_layout

# How the model reads text and pools: training and encoding alike (Tevatron passes them to both too).
text=(--pooling eos --normalize --append_eos_token --query_prefix "Query: " --passage_prefix "Passage: "
  --query_max_len 32 --passage_max_len 156 --attn_implementation sdpa)

msmarco_dev_qrels
if stage train; then
  submit python -m raytev train \
    --model_name_or_path "$BASE_MODEL" --dataset_name Tevatron/msmarco-passage-aug \
    --output_dir "$RUN_DIR/model" --storage_path "$CHECKPOINTS" \
    --lora --lora_target_modules q_proj,k_proj,v_proj,o_proj,down_proj,up_proj,gate_proj \
    --lora_r 16 --lora_alpha 64 --lora_dropout 0.1 \
    "${text[@]}" --temperature 0.01 \
    --bf16 --torch_dtype bfloat16 --gradient_checkpointing \
    --per_device_train_batch_size 8 --train_group_size 16 --learning_rate 1e-4 --num_train_epochs 1 \
    --save_steps 50 --logging_steps 10 \
    "${layout[@]}" --cpus_per_worker "$CPUS_PER_WORKER" --use_gpu
fi
# The base model with the trained adapter (model/ alone would do too: it names its base model).
msmarco_dev_stages "$BASE_MODEL" 128 --lora_name_or_path "$RUN_DIR/model" --bf16 "${text[@]}"
