"""`raytev <command>`: parse the flags into the stage's dataclasses, call the stage, print what it did."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass

from raytev import __version__
from raytev.args import (DataArguments, DemoArguments, EncodeArguments, EncoderArguments, EvalArguments, IndexArguments,
                         IndexBuildArguments, MineArguments, ModelArguments, PipelineArguments, PrecisionArguments,
                         RayArguments, RetrievalArguments, SearchArguments, ServeArguments, TrainingArguments)
from raytev.errors import RaytevError
from raytev.flags import parse_options


@dataclass(frozen=True)
class Command:
    """A CLI command: its words, help line, option dataclasses and the function that runs it."""

    words: tuple[str, ...]
    help: str
    options: tuple[type, ...]
    run: Callable[..., int]


def run_data_prepare(data: DataArguments, model: ModelArguments) -> int:
    """`raytev data prepare`."""
    from raytev.data.prepare import prepare_data

    prepared = prepare_data(data, model)
    print(prepared.source.label)
    for kind, table in (("corpus", prepared.corpus), ("queries", prepared.queries)):
        if table is None:
            continue
        state = "cache hit, reused" if prepared.reused[kind] else "tokenized"
        print(f"  {kind:<8} {describe_table(table)}  [{state}]\n           {table.path}")
    reused = sum(prepared.reused.values())
    verdict = "cache hit: nothing to do" if prepared.all_reused else f"{reused}/{len(prepared.reused)} tables reused"
    print(f"prepared in {prepared.seconds:.2f} s ({verdict})")
    return 0


def describe_table(table) -> str:
    """One line of counts for a token table."""
    manifest = table.manifest
    if table.kind == "corpus":
        return (f"{table.rows:,} passages, mean {manifest['mean_tokens']} tokens, "
                f"{manifest['truncated']:,} cut at {manifest['settings']['passage_max_len']}")
    text = f"{table.rows:,} queries"
    if manifest.get("groups"):
        text += f" with {manifest['positives']:,} positives and {manifest['negatives']:,} negatives"
    return text + f", mean {manifest['query_mean_tokens']} tokens"


def run_data_validate(data: DataArguments) -> int:
    """`raytev data validate`."""
    from raytev.data.prepare import validate_data

    report = validate_data(data)
    parts = []
    if report.passages is not None:
        parts.append(f"{report.passages:,} passages")
    if report.queries is not None:
        groups = f" with {report.positives:,} positives and {report.negatives:,} negatives" \
            if report.positives is not None else ""
        parts.append(f"{report.queries:,} queries{groups}")
    print(f"{report.source.label}: valid: {', '.join(parts)} ({report.seconds:.2f} s)")
    return 0


def run_train(data: DataArguments, model: ModelArguments, training: TrainingArguments,
              precision: PrecisionArguments, cluster: RayArguments) -> int:
    """`raytev train`."""
    from raytev.training.trainer import train

    result = train(data, model, training, precision, cluster)
    losses = [entry["loss"] for entry in result.log if "loss" in entry]
    resumed = f", resumed from step {result.resumed_from}" if result.resumed_from is not None else ""
    loss = f", loss {losses[0]:.4f} -> {losses[-1]:.4f}" if losses else ""
    print(f"trained {result.steps} steps ({result.epochs:.2f} epochs) in {result.seconds:.1f} s{resumed}{loss}; "
          f"model saved to {result.output_dir}")
    return 0


def run_encode(data: DataArguments, model: ModelArguments, options: EncodeArguments, encoder: EncoderArguments,
               precision: PrecisionArguments, cluster: RayArguments) -> int:
    """`raytev encode`."""
    from raytev.encoding.encoder import encode

    result = encode(data, model, options, encoder, precision, cluster)
    reused = f", {result.reused_shards} of {result.shards} shards kept from an earlier run" if result.reused_shards else ""
    print(f"encoded {result.rows:,} texts ({result.dim} dims) in {result.seconds:.1f} s "
          f"({result.rows_per_second:.1f}/s){reused} -> {result.output}")
    return 0


def run_eval(args: EvalArguments) -> int:
    """`raytev eval`."""
    from raytev.eval.files import evaluate_files
    from raytev.eval.report import format_json, format_table

    evaluation = evaluate_files(args)
    print(format_json(evaluation) if args.json else format_table(evaluation, title=args.run))
    return 0


def run_index(build: IndexBuildArguments, index: IndexArguments, cluster: RayArguments) -> int:
    """`raytev index`."""
    from raytev.retrieval import index_files

    built, folder = index_files(build, index, cluster.use_gpu)
    print(f"{built.info.describe()} -> {folder}")
    return 0


def run_search(options: SearchArguments, retrieval: RetrievalArguments) -> int:
    """`raytev search`."""
    from raytev.retrieval import search_files

    queries, lines, seconds = search_files(options.query_reps, options.passage_reps, options.save_ranking_to,
                                           retrieval, options.format, options.input_format)
    print(f"searched {queries:,} queries (depth {retrieval.depth}) in {seconds:.1f} s: {lines:,} lines "
          f"({options.format}) -> {options.save_ranking_to}")
    return 0


def run_pipeline_command(data: DataArguments, model: ModelArguments, training: TrainingArguments,
                         encoder: EncoderArguments, index: IndexArguments, retrieval: RetrievalArguments,
                         precision: PrecisionArguments, cluster: RayArguments, pipeline: PipelineArguments) -> int:
    """`raytev pipeline`."""
    from raytev.eval.report import format_table
    from raytev.pipeline import METRICS_FILE, run_pipeline

    result = run_pipeline(data, model, training, encoder, index, retrieval, precision, cluster, pipeline)
    print(f"stages:\n{result.stage_table()}")
    print(format_table(result.metrics, title=f"{result.model} on {data.dataset_name or data.dataset_path} "
                                             f"{data.dataset_split}"))
    print(f"metrics written to {result.output_dir / METRICS_FILE}")
    return 0


def run_mine(data: DataArguments, model: ModelArguments, encoder: EncoderArguments, index: IndexArguments,
             retrieval: RetrievalArguments, precision: PrecisionArguments, cluster: RayArguments,
             options: MineArguments) -> int:
    """`raytev mine`."""
    from raytev.mining import mine

    result = mine(data, model, encoder, index, retrieval, precision, cluster, options)
    print(f"mined {result.mined_negatives:,} negatives for {result.groups:,} queries in {result.seconds:.1f} s "
          f"-> {result.output}")
    return 0


def run_demo_command(options: DemoArguments, cluster: RayArguments) -> int:
    """`raytev demo`."""
    from raytev.demo import DemoSettings, comparison_table, run_demo

    result = run_demo(DemoSettings(output_dir=options.output_dir), cluster)
    print("stages:")
    for phase, stage in result.stages:
        print(f"  {phase:<11} {stage.name:<16} {stage.seconds:>7.1f} s  {stage.detail}")
    print(comparison_table(result.before, result.after))
    print(f"chart: {result.chart}")
    print(f"fine-tuned model: {result.model_dir}\nits index: {result.index_dir}")
    print("serve it (Ctrl-C stops; then try the curl line it prints, or http://127.0.0.1:8000/docs):\n"
          f"  raytev serve --model_name_or_path {result.model_dir} --index {result.index_dir} --corpus scifact")
    print(f"demo finished in {result.seconds / 60:.1f} min")
    return 0


def run_serve(options: ServeArguments, model: ModelArguments, precision: PrecisionArguments,
              cluster: RayArguments) -> int:
    """`raytev serve`."""
    from raytev.serve.app import serve_config, service_banner, serve_until_interrupted, start_service

    if options.print_config:
        import yaml

        print(yaml.safe_dump(serve_config((options, model, precision, cluster)), sort_keys=False), end="")
        return 0
    url = start_service((options, model, precision, cluster))
    print(service_banner((options, model, precision, cluster), url), flush=True)
    serve_until_interrupted()
    print("stopped serving")
    return 0


COMMANDS = (
    Command(("data", "prepare"), "validate, tokenize and cache a dataset (reused while its inputs are unchanged)",
            (DataArguments, ModelArguments), run_data_prepare),
    Command(("train",), "fine-tune a dense retriever on Ray Train (resumes from output_dir's checkpoints)",
            (DataArguments, ModelArguments, TrainingArguments, PrecisionArguments, RayArguments), run_train),
    Command(("encode",), "encode a corpus (or its queries) into embedding shards on a Ray Data actor pool",
            (DataArguments, ModelArguments, EncodeArguments, EncoderArguments, PrecisionArguments, RayArguments),
            run_encode),
    Command(("eval",), "score a run against qrels (nDCG@10, MRR@10, R@100, R@1000, MAP) or QA answer accuracy",
            (EvalArguments,), run_eval),
    Command(("index",), "build a FAISS index (flat or any index_factory spec) from embedding shards",
            (IndexBuildArguments, IndexArguments, RayArguments), run_index),
    Command(("search",), "retrieve the top passages for every query and write a run file",
            (SearchArguments, RetrievalArguments), run_search),
    Command(("mine",), "mine hard negatives with a model's own retrieval into Tevatron training JSONL",
            (DataArguments, ModelArguments, EncoderArguments, IndexArguments, RetrievalArguments, PrecisionArguments,
             RayArguments, MineArguments), run_mine),
    Command(("pipeline",), "[train,] encode, index, search and evaluate in one command",
            (DataArguments, ModelArguments, TrainingArguments, EncoderArguments, IndexArguments, RetrievalArguments,
             PrecisionArguments, RayArguments, PipelineArguments), run_pipeline_command),
    Command(("demo",), "the offline demo: SciFact + MiniLM, zero-shot, mined negatives, fine-tuned, compared",
            (DemoArguments, RayArguments), run_demo_command),
    Command(("data", "validate"), "check a dataset's files; problems are reported by file, line and field",
            (DataArguments,), run_data_validate),
    Command(("serve",), "serve an index over HTTP with Ray Serve: text or vector queries, shards, hot swaps",
            (ServeArguments, ModelArguments, PrecisionArguments, RayArguments), run_serve),
)


def top_level_parser() -> argparse.ArgumentParser:
    """The `raytev` parser: lists the commands; each command parses its own flags."""
    listing = "\n".join(f"  {' '.join(command.words):<16}{command.help}" for command in COMMANDS)
    parser = argparse.ArgumentParser(
        prog="raytev",
        usage="raytev <command> [flags]   (raytev <command> --help for its flags)",
        description="Dense retrieval on Ray: Tevatron's train / encode / index / search / evaluate.",
        epilog=f"commands:\n{listing}\n\nA command also accepts one JSON file holding its flags as keys.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"raytev {__version__}")
    return parser


def find_command(argv: list[str]) -> tuple[Command | None, list[str]]:
    """The command named by the first words of argv, and the remaining arguments."""
    for command in sorted(COMMANDS, key=lambda c: -len(c.words)):
        if tuple(argv[:len(command.words)]) == command.words:
            return command, argv[len(command.words):]
    return None, argv


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `raytev` command; returns the exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    command, rest = find_command(argv)
    if command is None:
        parser = top_level_parser()
        if argv and not argv[0].startswith("-"):
            parser.print_usage(sys.stderr)
            print(f"raytev: error: unknown command '{' '.join(argv[:2])}'; see `raytev --help`", file=sys.stderr)
            return 2
        parser.parse_args(argv)
        parser.print_help()
        return 0
    try:
        options = parse_options(command.options, rest, f"raytev {' '.join(command.words)}", command.help)
        return command.run(*options)
    except RaytevError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; nothing half-written was kept", file=sys.stderr)
        return 130
