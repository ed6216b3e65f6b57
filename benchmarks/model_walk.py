"""Which raytev files a model passes through in training, and which of them read the model's folder.

Trains a tiny random BERT that raytev saved (raytev_model.json, sentence-transformers files) in-process
(`--num_workers 0`, two steps, checkpoints, the export) under a profiler that records every call into raytev that is
handed the model (its ResolvedModel, DenseModel, settings or a path in its folder), file by file, and an audit hook
that records every file of the model's folder opened, with the raytev files on the stack. Prints the walk (files in
the order first entered, with how often the walk came back to each after leaving it) and the folder reads; writes
benchmarks/results/model_walk[_LABEL].json. The peer is the same walk at another commit: run it before and after a
change.

    python benchmarks/model_walk.py --work /tmp/walk
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import write_result  # noqa: E402

import raytev  # noqa: E402

PACKAGE = Path(raytev.__file__).resolve().parent  # the raytev imported (PYTHONPATH can point at another checkout)
MODEL_TYPES = {"ResolvedModel", "DenseModel", "DenseModelSettings"}


def raytev_chain(frame) -> str:
    """The raytev files on the stack, outermost first (repeats folded): who asked for a read, down to who read."""
    files = []
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(str(PACKAGE)) and (not files or files[-1] != name[len(str(PACKAGE)) + 1:]):
            files.append(name[len(str(PACKAGE)) + 1:])
        frame = frame.f_back
    return " > ".join(reversed(files[:4])) or "(outside raytev)"


def main() -> None:
    """Train, trace, print and save the walk."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/raytev-model-walk")
    parser.add_argument("--label", default="", help="Saved as results/model_walk_<label>.json (e.g. before, after).")
    arguments = parser.parse_args()
    work = Path(arguments.work)
    shutil.rmtree(work, ignore_errors=True)
    os.environ["RAYTEV_CACHE_DIR"] = str(work / "cache")  # a cold token cache: both runs prepare the data
    from helpers import save_tiny_bert, tiny_tokenizer, toy_training_groups, write_jsonl

    # A folder raytev saved (raytev_model.json and the sentence-transformers files), as a fine-tuned model is.
    from raytev.modeling.dense import DenseModel

    source = DenseModel.from_pretrained(save_tiny_bert(work / "plain"), pooling="mean", normalize=True)
    model = work / "model"
    source.save_pretrained(model, tokenizer=tiny_tokenizer(), max_seq_length=64)
    data = write_jsonl(work / "train.jsonl", toy_training_groups(16))
    walk: list[str] = []
    reads: Counter = Counter()

    def carries_the_model(value) -> bool:
        return type(value).__name__ in MODEL_TYPES or (isinstance(value, (str, Path)) and str(value).startswith(
            str(model)))

    def profile(frame, event, _arg):
        if event != "call":
            return
        callee = frame.f_code.co_filename
        # The model's walk: calls into raytev that are handed the model (resolved, loaded, its settings, its folder).
        if not callee.startswith(str(PACKAGE)) or not any(map(carries_the_model, frame.f_locals.values())):
            return
        callee = callee[len(str(PACKAGE)) + 1:]
        if not walk or walk[-1] != callee:
            walk.append(callee)

    def audit(event, args):
        if event == "open" and isinstance(args[0], (str, Path)) and str(args[0]).startswith(str(model)):
            reads[(raytev_chain(sys._getframe(1)), str(Path(args[0]).relative_to(model)))] += 1

    sys.addaudithook(audit)
    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        raytev.train(model_name_or_path=str(model), dataset_path=str(data), output_dir=str(work / "out"),
                     train_group_size=2, per_device_train_batch_size=4, max_steps=2, save_steps=1, num_workers=0,
                     logging_steps=1)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)

    entered = list(dict.fromkeys(walk))
    returns = {name: walk.count(name) - 1 for name in entered}
    print(f"files entered: {len(entered)}; moves between files: {len(walk) - 1}; "
          f"returns to a file left: {sum(returns.values())}")
    for name in entered:
        print(f"  {name:<40} returned to {returns[name]} times")
    folder_reads = sorted(reads.items(), key=lambda item: (item[0][0], item[0][1]))
    print(f"opens of the model folder's files: {sum(reads.values())}")
    for (reader, file), count in folder_reads:
        print(f"  {count} x {file:<28} {reader}")
    name = "model_walk" + (f"_{arguments.label}" if arguments.label else "")
    write_result(name, {"entered": entered, "returns": returns, "moves": len(walk) - 1,
                        "folder_reads": [{"reader": reader, "file": file, "count": count}
                                         for (reader, file), count in folder_reads]})


if __name__ == "__main__":
    main()
