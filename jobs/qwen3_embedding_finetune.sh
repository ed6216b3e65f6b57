#!/usr/bin/env bash
# Fine-tune a Qwen3-Embedding model on MS MARCO passage (Tevatron/msmarco-passage-aug, hard negatives from BM25's
# and coCondenser's top 200), then encode the 8.8M-passage corpus, search it exactly with the dev queries and
# score, as jobs/repllama_msmarco.sh does (no index stage: the search reads the corpus embeddings one shard at a
# time, as a flat index the 8B's 4096-dimensional vectors would take 144 GB of the head's memory, the 0.6B's 36 GB).
#   jobs/qwen3_embedding_finetune.sh                 # Qwen3-Embedding-0.6B, full fine-tune on one GPU
#   BASE_MODEL=Qwen/Qwen3-Embedding-8B LORA=1 jobs/qwen3_embedding_finetune.sh   # LoRA, FSDP over 4 GPUs
#   STAGES="search eval" jobs/qwen3_embedding_finetune.sh
# BASE_MODEL  Qwen/Qwen3-Embedding-0.6B (default), -4B or -8B
# LORA        0 (default): train every weight; 1: LoRA adapters on the frozen model (for the 4B and 8B sizes)
# TRAIN_GPUS  training workers (default 1, with LORA=1 4); 128 queries per optimizer step on any number
# Outputs under $RAYTEV_STORAGE/<base model>-msmarco[-lora] (model/, corpus/, dev_queries/, dev.run.txt).
#
# No --pooling, --normalize or prompt flags: the model folder is a sentence-transformers folder (model card,
# https://huggingface.co/Qwen/Qwen3-Embedding-0.6B: "sentence-transformers" usage with prompt_name="query") whose
# 1_Pooling/config.json says last-token pooling, whose modules.json ends with Normalize, and whose
# config_sentence_transformers.json holds the query prompt "Instruct: Given a web search query, retrieve relevant
# passages that answer the query\nQuery:" and an empty document prompt; raytev reads all three from the folder
# (raytev/model/) and saves them with the fine-tuned model, which the encode stage reads. No
# --append_eos_token either: the model's tokenizer ends every text with <|endoftext|> itself
# (QwenLM/Qwen3-Embedding issue 54: "an EOS token is automatically added at the end"), while its tokenizer's
# eos_token is another token, <|im_end|> (issue 122 there), which the flag would append after it. Lengths are
# given: raytev's default would be the folder's own max_seq_length (sentence_bert_config.json), sized for the
# model's 32k context; queries get 64 tokens because the query prompt alone takes about 20. The temperature is given too: a sentence-transformers folder has none, and
# raytev's default of 1 trains normalized embeddings poorly.
#
# Hyper-parameters: Tevatron's examples/example_qwen3.md at commit eaa42a87a0817cf95260afd29a47047811b603d6
# (texttron/tevatron; it fine-tunes Qwen3-Embedding-4B on SciFact): --lora --lora_target_modules
# q_proj,k_proj,v_proj,o_proj,down_proj,up_proj,gate_proj, --bf16, --pooling last, --normalize,
# --temperature 0.01, --per_device_train_batch_size 8, --gradient_checkpointing, --train_group_size 16,
# --learning_rate 1e-4, --save_steps 50, --logging_steps 10 (its --padding_side left is not needed: raytev's
# last-token pooling finds the last real token on either side). For MS MARCO: 1 epoch, 156-token passages and 128
# queries per step as jobs/repllama_msmarco.sh (Tevatron's MS MARCO LLM command). The full fine-tune's learning
# rate, 1e-5, is this recipe's choice, not a published one (an already trained embedding model, every weight
# updated). Full fine-tune: fp32 weights with bf16 autocast (--bf16), 0.6B x 16 bytes (weights, gradients, AdamW
# state) is ~10 GB, with gradient checkpointing within a 24 GB single-GPU worker. LoRA: weights loaded in bf16
# (8B: 16 GB), sharded over the workers with FSDP, on the 4-GPU worker type (CPUS_PER_WORKER, as in
# jobs/repllama_msmarco.sh). Model card facts: 0.6B, 28 layers, 32k context, embeddings up to 1024 dimensions;
# 4B: 2560, 8B: 4096.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
BASE_MODEL="${BASE_MODEL:-Qwen/Qwen3-Embedding-0.6B}"
LORA="${LORA:-0}"
base_name="$(printf %s "${BASE_MODEL##*/}" | tr "[:upper:]" "[:lower:]")"
QRELS="$DATA/msmarco/qrels.dev.tsv"
SEARCH_SHARDS=1  # no index stage (common.sh)

case "$LORA" in
  0 | false)
    TRAIN_GPUS="${TRAIN_GPUS:-1}"
    RUN_DIR="$STORAGE/${base_name}-msmarco"
    training=(--learning_rate 1e-5 --bf16)
    encoding=("$RUN_DIR/model" 256 --bf16)
    ;;
  1 | true)
    TRAIN_GPUS="${TRAIN_GPUS:-4}"
    RUN_DIR="$STORAGE/${base_name}-msmarco-lora"
    training=(--lora --lora_target_modules q_proj,k_proj,v_proj,o_proj,down_proj,up_proj,gate_proj
      --lora_r 16 --lora_alpha 64 --lora_dropout 0.1 --learning_rate 1e-4 --bf16 --torch_dtype bfloat16
      --cpus_per_worker "${CPUS_PER_WORKER:-10}")
    encoding=("$BASE_MODEL" 128 --lora_name_or_path "$RUN_DIR/model" --bf16)
    ;;
  *) echo "LORA must be 0 (full fine-tune) or 1 (LoRA), got $LORA" >&2; exit 2 ;;
esac
llm_training_layout
training+=("${layout[@]}")
lengths=(--query_max_len 64 --passage_max_len 156)

msmarco_dev_qrels
if stage train; then
  submit python -m raytev train \
    --model_name_or_path "$BASE_MODEL" --dataset_name Tevatron/msmarco-passage-aug \
    --output_dir "$RUN_DIR/model" --storage_path "$CHECKPOINTS" \
    "${lengths[@]}" --temperature 0.01 --gradient_checkpointing \
    --per_device_train_batch_size 8 --train_group_size 16 --num_train_epochs 1 \
    --save_steps 50 --logging_steps 10 "${training[@]}" --use_gpu
fi
msmarco_dev_stages "${encoding[@]}" "${lengths[@]}"
