"""raytev: dense retrieval (Tevatron's train / encode / index / search / evaluate) on Ray.

The Python API mirrors the CLI: every function takes the command's flags as keyword arguments
(`raytev.encode(model_name_or_path=..., dataset_name="scifact", encode_output_path=...)`). Functions that
use Ray connect to the running session when there is one (`ray.init("ray://head:10001")` first to work
through a Ray client), else to `address=` / RAY_ADDRESS, else start Ray here.
"""

__version__ = "0.1.0"


def train(**options):
    """Fine-tune a dense retriever; keyword arguments are `raytev train`'s flags (model_name_or_path=..., ...)."""
    return _run(_train, options)


def encode(**options):
    """Encode passages (or queries, encode_is_query=True) into embedding shards; `raytev encode`'s flags."""
    return _run(_encode, options)


def build_index(**options):
    """Build and save a FAISS index from embedding shards; `raytev index`'s flags. Returns its IndexInfo.

    (Not `raytev.index`: that name is the raytev.index package.)
    """
    return _run(_build_index, options)


def search(**options) -> dict:
    """Rank passages for every query; `raytev search`'s flags. Returns {query id: [(docid, score), ...]}.

    With save_ranking_to= the run file is written too (in format=).
    """
    return _run(_search, options)


def evaluate(**options):
    """Score a run file against qrels (or QA answers); `raytev eval`'s flags. Returns {metric: value}."""
    return _run(_evaluate, options)


def _run(function, options: dict):
    """Call an API function here, or from a Ray client as a task on the cluster (see raytev.cluster.call_on_cluster)."""
    import sys

    if "ray" not in sys.modules and not str(options.get("address") or "").startswith("ray://"):
        return function(**options)  # no Ray in this process yet, so it cannot be a client: skip importing Ray
    from raytev.cluster import call_on_cluster, connect, is_client_address

    if is_client_address(options.get("address")):
        connect(options["address"])
    return call_on_cluster(function, options)


def _train(**options):
    """What raytev.train() does, in the process that runs it."""
    from raytev.args import DataArguments, ModelArguments, PrecisionArguments, RayArguments, TrainingArguments
    from raytev.flags import options_from_dict
    from raytev.training.trainer import train as run

    return run(*options_from_dict((DataArguments, ModelArguments, TrainingArguments, PrecisionArguments,
                                   RayArguments), options, "raytev.train()"))


def _encode(**options):
    """What raytev.encode() does, in the process that runs it."""
    from raytev.args import (DataArguments, EncodeArguments, EncoderArguments, ModelArguments, PrecisionArguments,
                             RayArguments)
    from raytev.encoding.encoder import encode as run
    from raytev.flags import options_from_dict

    return run(*options_from_dict((DataArguments, ModelArguments, EncodeArguments, EncoderArguments,
                                   PrecisionArguments, RayArguments), options, "raytev.encode()"))


def _build_index(**options):
    """What raytev.build_index() does, in the process that runs it."""
    from raytev.args import IndexArguments, IndexBuildArguments, RayArguments
    from raytev.flags import options_from_dict
    from raytev.retrieval import index_files

    build, spec, cluster = options_from_dict((IndexBuildArguments, IndexArguments, RayArguments), options,
                                             "raytev.build_index()")
    return index_files(build, spec, cluster.use_gpu)[0].info


def _search(**options) -> dict:
    """What raytev.search() does, in the process that runs it."""
    from raytev.args import RetrievalArguments, SearchArguments
    from raytev.flags import options_from_dict
    from raytev.index.runs import write_run
    from raytev.retrieval import rank_files

    files, retrieval = options_from_dict((SearchArguments, RetrievalArguments), options, "raytev.search()")
    query_ids, scores, docids = rank_files(files.query_reps, files.passage_reps, retrieval, files.input_format)
    if files.save_ranking_to:
        write_run(files.save_ranking_to, query_ids, scores, docids, files.format)
    # Columns a query did not fill (an ANN index that found fewer) hold None docids.
    return {query_id: [(str(docid), float(score)) for docid, score in zip(row_docids, row_scores) if docid is not None]
            for query_id, row_scores, row_docids in zip(query_ids, scores, docids)}


def _evaluate(**options):
    """What raytev.evaluate() does, in the process that runs it."""
    from raytev.args import EvalArguments
    from raytev.eval.files import evaluate_files
    from raytev.flags import options_from_dict

    (args,) = options_from_dict((EvalArguments,), options, "raytev.evaluate()")
    return evaluate_files(args)
