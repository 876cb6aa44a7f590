"""`seqmix arena`: plan the cells of a preset, run the ones not in the cache (with live progress), report."""
from __future__ import annotations

import datetime
import platform
import subprocess
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

import seqmix
from seqmix.arena import cells
from seqmix.arena.cache import CellCache, cell_key
from seqmix.arena.plan import Arch, matched_width, select_archs
from seqmix.arena.presets import PRESETS, get_preset
from seqmix.arena.report import render
from seqmix.bench.harness import machine_info

SECTIONS = ("lm", "recall", "speed", "ttt")


def configure(p) -> None:
    p.add_argument("--preset", default="cpu-small", choices=sorted(PRESETS),
                   help="model size, token budget and measurements (default: cpu-small, ≤ 20 min on 2 cores)")
    p.add_argument("--mixers", default="", help="comma-separated architectures (mixers or hybrid presets); "
                                                "default: every registered mixer and hybrid")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"subset of {','.join(SECTIONS)}")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: runs/arena-<preset>)")
    p.add_argument("--report-only", action="store_true", help="re-render the report from the cache; train nothing")


def _git_commit() -> str:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Plan:
    """Every cell of a preset as (section, key, label, run); `run(progress, workdir)` computes the cell and
    `key` finds it in the cache (the key hashes every setting the cell depends on)."""

    def __init__(self, preset, archs: list[Arch], sections: list[str], cache: CellCache):
        self.preset, self.archs, self.cache = preset, archs, cache
        self.items: list[tuple] = []
        lm = preset.lm
        self.widths = {a.name: matched_width(a, lm.target_params, lm.n_layers, lm.n_heads)[0] for a in archs}
        by_name = {a.name: a for a in archs}
        if "lm" in sections:
            for a in archs:
                self._add("lm", a.name, {"arch": asdict(a), "d": self.widths[a.name], "lm": asdict(lm)},
                          self._lm_runner(a))
        if "recall" in sections:
            for name in (n for n in preset.recall.archs if n in by_name):
                for w in preset.recall.widths:
                    params = {"arch": asdict(by_name[name]), "width": w, "recall": asdict(preset.recall)}
                    self._add("recall", f"{name}-d{w}", params, lambda progress, workdir, a=by_name[name], w=w:
                              cells.recall_cell(a, w, preset.recall, progress))
        if "speed" in sections:
            for a in archs:
                params = {"arch": asdict(a), "d": self.widths[a.name], "lm": asdict(lm),
                          "speed": asdict(preset.speed), "threads": torch.get_num_threads()}
                self._add("speed", a.name, params, lambda progress, workdir, a=a:
                          cells.speed_cell(a, self.widths[a.name], lm, preset.speed))
        if "ttt" in sections and "ttt_linear" in by_name:
            ttt = by_name["ttt_linear"]
            variants = [("mamba", b) for b in preset.ttt.mini_batch_sizes]
            variants += [(backbone, 16) for backbone in preset.ttt.backbones if backbone != "mamba"]
            for backbone, b in variants:
                opts = {"backbone": backbone, "mini_batch_size": lm.seq_len if b == "T" else b}
                params = {"arch": asdict(ttt), "d": self.widths[ttt.name], "lm": asdict(lm), "opts": opts,
                          "tokens": preset.ttt.train_tokens}
                labels = {"variant": f"{backbone} b={b}", "backbone": backbone, "b": str(b)}
                self._add("ttt", f"{backbone}-b{b}", params,
                          self._lm_runner(ttt, opts, preset.ttt.train_tokens, labels))

    def _lm_runner(self, arch: Arch, opts: dict | None = None, tokens: int | None = None, labels=None):
        def run(progress, workdir):
            result = cells.lm_cell(arch, self.widths[arch.name], self.preset.lm, workdir, mixer_options=opts,
                                   progress=progress, train_tokens=tokens)
            return {**result, **(labels or {})}

        return run

    def _add(self, section: str, label: str, params: dict, run) -> None:
        self.items.append((section, cell_key(section, label, params), f"{section}:{label}", run))


def collect(plan: Plan, meta: dict) -> dict:
    results = {"meta": meta, "lm": [], "recall": [], "speed": [], "ttt": []}
    for section, key, _, _ in plan.items:
        cell = plan.cache.get(key)
        if cell is not None:
            results[section].append(cell)
    return results


def run(args) -> int:
    preset = get_preset(args.preset)
    sections = [s for s in args.sections.split(",") if s]
    bad = sorted(set(sections) - set(SECTIONS))
    if bad:
        raise ValueError(f"arena --sections: unknown {bad}; choose from {list(SECTIONS)}")
    archs = select_archs([m for m in args.mixers.split(",") if m])
    out = args.out or Path("runs") / f"arena-{preset.name}"
    cache = CellCache(out)
    plan = Plan(preset, archs, sections, cache)
    todo = [item for item in plan.items if cache.get(item[1]) is None]
    print(f"arena: preset {preset.name} ({preset.description}), {len(archs)} architectures, "
          f"{len(plan.items)} cells, {len(plan.items) - len(todo)} cached, output {out}")
    started = time.perf_counter()
    if args.report_only:
        if todo:
            print(f"arena: {len(todo)} cells are not in the cache yet; the report leaves them out")
    else:
        bar = tqdm(total=len(plan.items), initial=len(plan.items) - len(todo), unit="cell", dynamic_ncols=True)
        for section, key, label, compute in todo:
            bar.set_description(label)

            def progress(record, label=label):
                if "step" in record and "loss" in record:
                    bar.set_postfix_str(f"step {record['step']} loss {record['loss']:.3f}")
                elif "epoch" in record:
                    bar.set_postfix_str(f"epoch {record['epoch']} loss {record['loss']:.3f}")

            t0 = time.perf_counter()
            result = compute(progress, cache.workdir(key))
            result["cell_seconds"] = time.perf_counter() - t0
            cache.put(key, result)
            bar.update(1)
        bar.close()
    meta = {"preset": preset.name, "settings": preset.to_dict(), "lm": asdict(preset.lm),
            "recall": asdict(preset.recall), "machine": machine_info(), "python": platform.python_version(),
            "seqmix": seqmix.__version__, "commit": _git_commit(), "out": str(out),
            "finished": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "archs": [a.name for a in archs], "widths": plan.widths,
            "wall_seconds_this_run": time.perf_counter() - started}
    results = collect(plan, meta)
    report = render(out, results)
    if results["lm"]:
        print("\nvalidation bits per byte (held-out works):")
        for r in sorted(results["lm"], key=lambda r: r["val_bpb"]):
            print(f"  {r['arch']:18s} {r['val_bpb']:.3f}   ({r['params']:,} parameters)")
    print(f"arena: report written to {report}")
    return 0
