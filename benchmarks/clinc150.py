"""CLINC150 as a second intent data set for the benchmarks, written as JSON Lines.

    python benchmarks/clinc150.py OOS_EVAL_CHECKOUT [--variant small] [--out benchmarks/.protege/data/clinc150]

CLINC150 (Larson et al., 2019, "An Evaluation Dataset for Intent Classification and
Out-of-Scope Prediction", CC BY 3.0) has 150 intents over ten domains and out-of-scope
queries, the setting protege must hold beyond BANKING77: more intents, fewer examples of
each, and traffic the task does not cover. It is never committed; this script converts a
checkout of https://github.com/clinc/oos-eval (its ``data/data_<variant>.json``) into the
form ``benchmarks/intents.py`` reads, labelling out-of-scope queries ``oos``:

- ``clinc150_train.jsonl``: the in-scope train rows and the out-of-scope train rows
  (variant ``small``: 50 of each intent and 100 out of scope; ``full``: 100 and 100);
- ``clinc150_val.jsonl``: the validation rows, unused by the benchmarks;
- ``clinc150_test.jsonl``: the test rows, 30 of each intent and 1,000 out of scope.

As published, the out-of-scope share shifts between the splits (1.3% of train, 18% of test):
a rule certified on a golden set drawn from the train traffic is judged on traffic it did not
see. ``--stationary`` instead pools the out-of-scope rows of all three splits and deals them
to train and test in proportion to their in-scope rows (seeded), as a deployment whose traffic
does not change between its training and its test phases sees them (written to
``<out>-stationary``).
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from protege.generator import write_jsonl
from protege.task import OOS

SPLITS = {"train": ("train", "oos_train"), "val": ("val", "oos_val"), "test": ("test", "oos_test")}


def convert(source: Path, variant: str, out: Path, stationary: bool = False) -> dict[str, int]:
    """Write the three files from ``source`` (a checkout, or its ``data_<variant>.json``); rows per file."""
    path = source if source.is_file() else source / "data" / f"data_{variant}.json"
    data = json.loads(path.read_text())
    if stationary:
        pooled = [pair for key in ("oos_train", "oos_val", "oos_test") for pair in data[key]]
        random.Random(0).shuffle(pooled)
        to_train = round(len(pooled) * len(data["train"]) / (len(data["train"]) + len(data["test"])))
        data = data | {"oos_train": pooled[:to_train], "oos_val": [], "oos_test": pooled[to_train:]}
    written = {}
    for split, keys in SPLITS.items():
        rows = [
            {"id": f"clinc150-{split}-{i:05d}", "text": text, "label": OOS if label == "oos" else label, "split": split}
            for i, (text, label) in enumerate(pair for key in keys for pair in data[key])
        ]
        write_jsonl(rows, out / f"clinc150_{split}.jsonl")
        written[split] = len(rows)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path, help="A checkout of github.com/clinc/oos-eval, or one of its data_*.json.")
    ap.add_argument("--variant", default="small", choices=["small", "full", "imbalanced", "oos_plus"])
    ap.add_argument("--out", type=Path, default=Path("benchmarks/.protege/data/clinc150"))
    ap.add_argument(
        "--stationary", action="store_true", help="Deal the out-of-scope rows to train and test in proportion."
    )
    args = ap.parse_args()
    out = args.out.with_name(args.out.name + "-stationary") if args.stationary else args.out
    written = convert(args.source, args.variant, out, args.stationary)
    print(f"wrote {out}: " + ", ".join(f"{split} {n} rows" for split, n in written.items()))


if __name__ == "__main__":
    main()
