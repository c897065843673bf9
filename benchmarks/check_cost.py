"""What one check of the serving rule costs the trainer: cold (the version's graph run on every
trusted row) and warm (its outputs kept, ``protege.student.train.encoded``).

    python benchmarks/check_cost.py [--home .protege/bench] [--json reports/benchmark-check-cost.json]

Reads what a ``protege bench stream`` run left in its home (the registry, the reviewed rows, the
task) and judges the newest trained version's rule again on every trusted row, as the trainer
does every ``recertify_every`` reviewed rows: first with nothing kept (a new version's first check
before stop 38, when nothing had scored its rows yet), then ``--repeat`` times with the outputs
kept (every later check; since stop 38 also a new version's first, which reads the outputs its
retrain computed on the rows it was certified on). Wall seconds and this process's CPU seconds,
on an otherwise quiet machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from protege.harness import machine
from protege.review import ReviewStore
from protege.student.manifest import Manifest
from protege.student.train import ENCODED_MODELS, recertify_version
from protege.task import load_tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--home", type=Path, default=Path(".protege/bench"), help="a bench run's home")
    ap.add_argument("--tenant", default="bench")
    ap.add_argument("--task", default="bench")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()

    task = load_tasks(args.home / "tasks")[args.task]
    reviews = ReviewStore(args.home / "review")
    truth = reviews.truth(args.tenant, task, ())
    folders = sorted((args.home / "registry" / args.tenant / args.task).glob("v[0-9]*"))
    trained = [f for f in folders if Manifest.load(f).recertified_from is None]
    if not trained or not truth:
        raise SystemExit(f"no trained version or no reviewed rows under {args.home}: run `protege bench stream` first")
    folder = trained[-1]
    scratch = Path(tempfile.mkdtemp(prefix="protege-check-"))  # a replaced rule's new version goes here

    def check() -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        recertify_version(
            folder,
            registry=scratch,
            tenant=args.tenant,
            task=task,
            truth=truth,
            places=reviews.places(args.tenant, args.task),
        )
        return time.perf_counter() - wall, time.process_time() - cpu

    cold = check()
    warm = [check() for _ in range(args.repeat)]
    best = min(warm)
    host = machine()
    rows = [
        ("cold: the graph on every row", cold),
        (f"warm: outputs kept (best of {args.repeat})", best),
    ]
    print(f"{host['cpu']}, {host['cores']} cores; {folder.name}, {len(truth):,} trusted rows")
    print("| check | wall s | CPU s | of cold |\n|---|---|---|---|")
    for name, (wall, cpu) in rows:
        print(f"| {name} | {wall:.2f} | {cpu:.2f} | {wall / cold[0]:.1%} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "machine": host,
                    "version": folder.name,
                    "rows": len(truth),
                    "cold": {"wall_s": cold[0], "cpu_s": cold[1]},
                    "warm": [{"wall_s": w, "cpu_s": c} for w, c in warm],
                    "kept_models": ENCODED_MODELS,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
