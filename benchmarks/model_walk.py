"""Which raytev files a model passes through in training, and which of them read the model's folder.

Trains a tiny random BERT in-process (`--num_workers 0`, a few steps, one checkpoint, the export) under a profiler
that records every call crossing from one raytev file into another, and an audit hook that records every file of
the model's folder opened, with the raytev file that opened it. Prints the walk (files in the order first entered,
with how often the walk came back to each after leaving it) and the folder reads; writes
benchmarks/results/model_walk.json. The peer is the same walk at another commit: run it before and after a change.

    python benchmarks/model_walk.py --work /tmp/walk
"""

from __future__ import annotations

import argparse
import shutil
import sys
import threading
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from common import write_result  # noqa: E402

PACKAGE = Path(__file__).resolve().parents[1] / "raytev"


def raytev_file(frame) -> str | None:
    """The raytev file (relative to the package) of the nearest raytev frame, or None."""
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith(str(PACKAGE)):
            return name[len(str(PACKAGE)) + 1:]
        frame = frame.f_back
    return None


def main() -> None:
    """Train, trace, print and save the walk."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/raytev-model-walk")
    parser.add_argument("--label", default="", help="Saved as results/model_walk_<label>.json (e.g. before, after).")
    arguments = parser.parse_args()
    work = Path(arguments.work)
    shutil.rmtree(work, ignore_errors=True)
    from helpers import save_tiny_bert, toy_training_groups, write_jsonl

    model = save_tiny_bert(work / "model")
    data = write_jsonl(work / "train.jsonl", toy_training_groups(16))
    import raytev

    walk: list[str] = []
    reads: Counter = Counter()

    def profile(frame, event, _arg):
        if event != "call":
            return
        callee = frame.f_code.co_filename
        if not callee.startswith(str(PACKAGE)):
            return
        callee = callee[len(str(PACKAGE)) + 1:]
        if not walk or walk[-1] != callee:
            walk.append(callee)

    def audit(event, args):
        if event == "open" and isinstance(args[0], (str, Path)) and str(args[0]).startswith(str(model)):
            reads[(raytev_file(sys._getframe(1)) or "(outside raytev)", Path(args[0]).name)] += 1

    sys.addaudithook(audit)
    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        raytev.train(model_name_or_path=str(model), dataset_path=str(data), output_dir=str(work / "out"),
                     train_group_size=2, per_device_train_batch_size=4, max_steps=2, save_steps=1, num_workers=0,
                     logging_steps=1, pooling="mean", normalize=True)
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
        print(f"  {reader:<40} {file:<28} {count}")
    write_result("model_walk" + (f"_{arguments.label}" if arguments.label else ""), {"entered": entered, "returns": returns, "moves": len(walk) - 1,
                                "folder_reads": [{"reader": reader, "file": file, "count": count}
                                                 for (reader, file), count in folder_reads]})


if __name__ == "__main__":
    main()
