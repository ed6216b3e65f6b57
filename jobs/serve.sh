#!/usr/bin/env bash
# Deploy the search endpoint with Ray Serve: raytev.serving.app:build_app (ingress, query encoder on a GPU, index
# shard(s)), autoscaling between 1 and MAX_REPLICAS replicas per deployment.
#   RUN=my-run CORPUS_FILE=/mnt/cluster_storage/data/msmarco/corpus.jsonl jobs/serve.sh [raytev serve flags...]
# MODEL (default $RAYTEV_STORAGE/$RUN/model), INDEX (default $RAYTEV_STORAGE/$RUN/index), NUM_SHARDS (default 1),
# MAX_REPLICAS (default 4).
# `raytev serve --print_config` turns the flags into a Serve config here (raytev's own flag parsing and checks;
# the token below enters it only as a SHA-256), and `serve deploy` sends that to the cluster's dashboard and returns;
# `serve status --address $RAY_ADDRESS` shows when it is RUNNING. The application is imported from the raytev
# installed on the cluster (image or setup_commands): `serve deploy` uploads no code. Run this where raytev is
# installed too (the checkout's virtualenv): it runs `python -m raytev` here.
# The HTTP proxy listens on 127.0.0.1:8000 of each node; reach it through a tunnel (ray attach CLUSTER.yaml -p 8000).
# To open it (--host 0.0.0.0), require a bearer token: export RAYTEV_AUTH_TOKEN first (Serve's proxy has no
# authentication of its own, and Ray's cluster token does not cover it).
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${RUN:?set RUN: the run name}" "${CORPUS_FILE:?set CORPUS_FILE: the corpus (JSONL/TSV) passages are read from}"

config="$(mktemp -t raytev-serve-XXXXXX.yaml)"
trap 'rm -f "$config"' EXIT
python -m raytev serve --print_config \
  --model_name_or_path "${MODEL:-$STORAGE/$RUN/model}" --index "${INDEX:-$STORAGE/$RUN/index}" \
  --corpus "$CORPUS_FILE" --num_shards "${NUM_SHARDS:-1}" \
  --use_gpu --bf16 --min_replicas 1 --max_replicas "${MAX_REPLICAS:-4}" \
  "$@" > "$config"
serve deploy --address "$RAY_ADDRESS" "$config"
