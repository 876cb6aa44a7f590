"""`seqmix arena`: plan the cells of a preset, run the ones not in the cache (with live progress), judge the
claims, report."""
from __future__ import annotations

import datetime
import platform
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

import seqmix
from seqmix.arena.cache import CellCache, cell_key
from seqmix.arena.claims import judge_all
from seqmix.arena.data import DEFAULT_DATA, describe_data
from seqmix.arena.plan import SECTIONS, Plan, select_archs
from seqmix.arena.presets import PRESETS, get_preset
from seqmix.arena.report import render
from seqmix.bench.harness import machine_info


def configure(p) -> None:
    p.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS),
                   help="model size, token budget and measurements (default: cpu-small, ≤ 20 min on 2 cores)")
    p.add_argument("--mixers", default="", help="comma-separated entrants (mixers or hybrid presets) for every "
                                                "section; default: each section's own list in the preset")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/arena-<preset>)")
    p.add_argument("--corpus", help="the language-modelling corpus: a text file, directory, glob, JSONL / Parquet, "
                                    "or shards from seqmix prepare (default: the vendored Shakespeare)")
    p.add_argument("--tokenizer", default="bytes",
                   help="bytes (default), bpe:N (trained on the training split) or a byte-level tokenizer.json")
    p.add_argument("--report-only", action="store_true", help="re-render the report from the cache; train nothing")


def _git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _progress_text(record: dict) -> str | None:
    if "accuracy" in record:
        return f"lr {record['lr']:g} step {record['step']} val acc {record['accuracy']:.3f}"
    if "step" in record and "loss" in record:
        return f"step {record['step']} loss {record['loss']:.3f}"
    return None


def run(args) -> int:
    preset = get_preset(args.preset)
    sections = [s for s in args.sections.split(",") if s]
    bad = sorted(set(sections) - set(SECTIONS))
    if bad:
        raise ValueError(f"arena --sections: unknown {bad}; choose from {list(SECTIONS)}")
    names = [m for m in args.mixers.split(",") if m]
    out = args.out or Path("runs") / f"arena-{preset.name}"
    cache = CellCache(out)
    data = describe_data(args.corpus, args.tokenizer, out) if args.corpus or args.tokenizer != "bytes" else None
    plan = Plan(preset, select_archs(names), sections, cell_key, explicit_selection=bool(names), data=data)
    todo = plan.todo(lambda key: cache.get(key) is not None)
    n_cells = len({item.key for item in plan.items})
    print(f"arena: preset {preset.name} ({preset.description}), {n_cells} cells, {n_cells - len(todo)} cached, "
          f"output {out}")
    started = time.perf_counter()
    if args.report_only:
        if todo:
            print(f"arena: {len(todo)} cells are not in the cache yet; the report leaves them out")
    else:
        bar = tqdm(total=n_cells, initial=n_cells - len(todo), unit="cell", dynamic_ncols=True)
        for item in todo:
            bar.set_description(item.label)

            def progress(record):
                text = _progress_text(record)
                if text:
                    bar.set_postfix_str(text)

            t0 = time.perf_counter()
            result = item.run(progress, cache.workdir(item.key))
            result["cell_seconds"] = time.perf_counter() - t0
            cache.put(item.key, result)
            bar.update(1)
        bar.close()
    meta = {"preset": preset.name, "settings": preset.to_dict(), "lm": asdict(preset.lm), "machine": machine_info(),
            "python": platform.python_version(), "seqmix": seqmix.__version__, "commit": _git_commit(),
            "out": str(out), "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "lm_entrants": plan.lm_entrants, "speed_entrants": plan.speed_entrants, "widths": plan.widths,
            "sections": sections, "data": {k: v for k, v in (data or DEFAULT_DATA).items() if k != "tokenizer_json"},
            "wall_seconds_this_run": time.perf_counter() - started,
            "compute_seconds": sum(cache.get(key).get("cell_seconds", 0.0) for key in {i.key for i in plan.items}
                                   if cache.get(key) is not None)}
    results = {"meta": meta, **plan.collect(cache.get)}
    results["claims"] = judge_all(results)
    report = render(out, results)
    print("\nclaims:")
    for row in results["claims"]:
        print(f"  {row['id']:5s} {row['verdict']:30s} {row['claim']}")
    print(f"arena: report written to {report}")
    return 0
