"""The demo's MAC with one or more fields changed, at the quick demo's budget.

Trains ``demo_spec(DemoSettings.quick("mac"))``'s MAC (MQAR with every query at the end, 250
steps) with the given ``TitansConfig`` fields changed, as an ablation run into
``OUT/NAME`` (a finished run is reused), and prints its recall at the demo's lengths and whether
the run was finite throughout (``n/f`` in place of a recall that was not).

    python benchmarks/mac_demo_variants.py mac-nl0 '{"num_memory_tokens": 0}'
    python benchmarks/mac_demo_variants.py mac-c16 '{"chunk_size": 16}'

Figures: docs/guides/mac_ablation.md (the demo with MAC).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from _finite import run_is_finite

from titans.experiments.ablation import RunSpec, run_one
from titans.experiments.demo import DemoSettings, demo_spec
from titans.experiments.report import accuracy_at


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("name", help="the run's name (its directory under --out)")
    parser.add_argument("fields", help="a JSON object of TitansConfig fields to change")
    parser.add_argument("--out", type=Path, default=Path("runs/mac_demo_variants"))
    args = parser.parse_args()
    changes = json.loads(args.fields)
    if not isinstance(changes, dict):
        parser.error(f"fields must be a JSON object, got {args.fields!r}")
    spec = demo_spec(DemoSettings.quick("mac"))
    run = RunSpec(args.name, dataclasses.replace(spec.runs[0].model, **changes))
    run_dir = args.out / args.name
    result = run_one(run, spec, run_dir)
    finite = run_is_finite(result, run_dir)
    recalls = []
    for n in spec.lengths:
        accuracy = accuracy_at(result, n)
        recalls.append(f"@{n} {'n/f' if accuracy is None or not finite else f'{100 * accuracy:.1f}%'}")
    print(f"{args.name} {changes}: {', '.join(recalls)}; finite: {'yes' if finite else 'no'}")


if __name__ == "__main__":
    main()
