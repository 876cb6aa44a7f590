"""Do two arena runs' speed sections agree? Each figure's median in one run against the other's range.

    python -m seqmix.arena.repeat runs/a/results.json runs/b/results.json

A figure (prefill or decode µs/token of one entrant at one L, generated tokens/s at one batch size, or the
seconds of one of TTT-Linear's forms)
agrees when the median of each run lies inside the interval the other run's report states for it: its range
over rounds widened by that run's measured machine drift (see arena/stats.py). The summary counts the
figures that agree; a figure outside names both runs' values. Claims' verdicts are listed side by side.
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass

from seqmix.arena.claims import context_speed, generation_speed, judge_all, machine_drift
from seqmix.arena.stats import Spread


@dataclass
class Disagreement:
    figure: str
    a: str  # as each run's report states it
    b: str


def speed_figures(results: dict) -> dict[str, tuple[Spread, bool]]:
    """{'attention prefill L=512': (Spread over rounds, whether it is a per-second rate), ...} of one run."""
    figures = {}
    for arch, speed in context_speed(results).items():
        for L, row in speed.by_length.items():
            for key in ("prefill", "decode"):
                figures[f"{arch} {key} L={L}"] = row[key], False
    for arch, by_batch in generation_speed(results).items():
        for batch, spread in by_batch.items():
            figures[f"{arch} generation batch={batch}"] = spread, True
    for cell in results.get("speed", []):
        if cell.get("kind") == "ttt_forms":
            for form, seconds in cell["forms"].items():
                figures[f"TTT-Linear {form} L={cell['L']}"] = Spread.of(seconds), False
    return figures


def compare(a: dict, b: dict) -> tuple[int, list[Disagreement]]:
    """(figures both runs measured, the ones whose medians fall outside the other run's range)."""
    fa, fb = speed_figures(a), speed_figures(b)
    da, db = machine_drift(a), machine_drift(b)
    common = [name for name in fa if name in fb]
    outside = []
    for n in common:
        (sa, rate), (sb, _) = fa[n], fb[n]
        if not (da.covers(sa, sb.median, rate) and db.covers(sb, sa.median, rate)):
            outside.append(Disagreement(n, da.fmt(sa, rate=rate), db.fmt(sb, rate=rate)))
    return len(common), outside


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seqmix.arena.repeat", description=__doc__.split("\n")[0])
    parser.add_argument("a", help="results.json of one arena run")
    parser.add_argument("b", help="results.json of another run of the same preset")
    args = parser.parse_args(argv)
    a, b = (json.load(open(path)) for path in (args.a, args.b))
    total, outside = compare(a, b)
    print(f"{total - len(outside)}/{total} speed figures agree (each median inside the other run's stated interval)")
    for d in outside:
        print(f"  {d.figure}: {d.a} vs {d.b}")
    for ra, rb in zip(judge_all(a), judge_all(b)):
        if "not measured" not in (ra["verdict"], rb["verdict"]):
            mark = "" if ra["verdict"] == rb["verdict"] else "   ← differs"
            print(f"{ra['id']:>5}: {ra['verdict']} | {rb['verdict']}{mark}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
