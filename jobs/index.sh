#!/usr/bin/env bash
# Build the FAISS index of a run's corpus embeddings (on the head, which holds it in memory while building).
#   RUN=my-run jobs/index.sh [--index_factory HNSW32 | IVF65536,PQ64 | ...]
# Reads $RAYTEV_STORAGE/$RUN/corpus (jobs/encode.sh), writes $RAYTEV_STORAGE/$RUN/index. The default is exact
# (Flat); a flat MS MARCO index needs ~27 GB of RAM on the head.
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${RUN:?set RUN: the run name}"

submit python -m raytev index \
  --passage_reps "$STORAGE/$RUN/corpus" --index_output_path "$STORAGE/$RUN/index" \
  "$@"
