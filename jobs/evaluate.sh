#!/usr/bin/env bash
# Search the index with the encoded queries, then score the run: qrels metrics, or QA answer accuracy.
#   RUN=my-run QRELS=/mnt/cluster_storage/data/msmarco/qrels.dev.tsv jobs/evaluate.sh
#   RUN=my-run QA_ANSWERS=/mnt/cluster_storage/data/nq/test.jsonl QA_CORPUS=/mnt/.../corpus.jsonl jobs/evaluate.sh
# Reads $RAYTEV_STORAGE/$RUN/queries and .../index; writes $RAYTEV_STORAGE/$RUN/run.txt. The metrics are printed
# in the job's log (`ray job logs <id>` shows it again). QRELS, QA_ANSWERS and QA_CORPUS are files on the shared
# filesystem (jobs/export_hf.py writes them from Hugging Face datasets).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${RUN:?set RUN: the run name}"

submit python -m raytev search \
  --query_reps "$STORAGE/$RUN/queries" --passage_reps "$STORAGE/$RUN/index" \
  --depth "${DEPTH:-1000}" --save_ranking_to "$STORAGE/$RUN/run.txt"
if [[ -n "${QA_ANSWERS:-}" ]]; then
  submit python -m raytev eval --run "$STORAGE/$RUN/run.txt" \
    --qa_answers "$QA_ANSWERS" --qa_corpus "${QA_CORPUS:?set QA_CORPUS: the corpus file}" --top_k 1,5,20,100
else
  submit python -m raytev eval --run "$STORAGE/$RUN/run.txt" --qrels "${QRELS:?set QRELS (or QA_ANSWERS)}"
fi
