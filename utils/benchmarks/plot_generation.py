"""A picture of one `utils.benchmarks.generate --json` run: seconds per sample by stage for every path and batch
against issue #16's targets, and the scaling table (motion length, batch size, database size).

    python -m utils.benchmarks.plot_generation gen.json [--out gen.png]
    python -m utils.benchmarks.generate ... --plot gen.png          # the same, at the end of a run

Bars are stacked by stage (text, retrieval, mask, residual, decode; "other" is the rest of the pipeline call:
the conversion to joints and Python), one bar per path, grouped by batch size. The dashed lines are the targets for
the run's device: on a CPU the official code's 6.8 s, 3× faster than it (fp32, batch 1), 2.0 s (bf16, batch 1) and
1.0 s (batch 32); on CUDA 15 ms (batch 1) and 2 ms (batch 256).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from utils.atomic import atomic_path  # noqa: E402
from utils.benchmarks.device_check import GPU_TARGETS as _GPU  # noqa: E402

_MOD = "utils/benchmarks/plot_generation.py"
STAGES = ("text", "retrieval", "mask", "residual", "decode")
STAGE_COLORS = {"text": "#9467bd", "retrieval": "#8c564b", "mask": "#1f77b4", "residual": "#ff7f0e",
                "decode": "#2ca02c", "other": "0.7"}
PATH_LABELS = {"naive": "naive", "fast_fp32": "fast fp32", "fast_bf16": "fast bf16",
               "fast_bf16_autocast": "bf16 autocast", "fast_bf16_compile": "bf16 + compile"}
OFFICIAL_CPU_S = 6.8          # ../shared/docs/performance.md: the official code, one 196-frame sample, this CPU
# (seconds per sample, label) of issue #16's targets
CPU_TARGETS = ((OFFICIAL_CPU_S, "official code 6.8 s"), (OFFICIAL_CPU_S / 3, "3× faster (fp32, batch 1)"),
               (2.0, "2.0 s (bf16, batch 1)"), (1.0, "1.0 s (batch 32)"))
GPU_TARGETS = ((_GPU["batch1_s"], f"{_GPU['batch1_s'] * 1e3:g} ms (batch 1)"),
               (_GPU["batch256_s"], f"{_GPU['batch256_s'] * 1e3:g} ms (batch 256)"))


class PlotError(ValueError):
    """A file that is not a generation benchmark result; main() prints it as one line."""


def _check(results: dict, source: str) -> None:
    runs = results.get("runs") if isinstance(results, dict) else None
    if not isinstance(runs, dict) or not runs:
        raise PlotError(f"{_MOD}: {source}: not a utils.benchmarks.generate --json result (no 'runs')")
    for batch, entry in runs.items():
        if not any(p in entry and "stages" in entry[p] for p in PATH_LABELS):
            raise PlotError(f"{_MOD}: {source}: batch {batch} has no timed path (expected one of "
                            f"{', '.join(PATH_LABELS)})")


def per_sample_stages(results: dict) -> list[tuple[str, str, dict[str, float]]]:
    """[(batch, path, {stage: seconds per sample, "other": the rest, "total": ...})] in the order they are drawn."""
    rows = []
    for batch, entry in sorted(results["runs"].items(), key=lambda kv: int(kv[0])):
        b = int(batch)
        for path in PATH_LABELS:
            if path not in entry or "stages" not in entry[path]:
                continue
            st = entry[path]["stages"]
            vals = {s: st[s]["median"] / b for s in STAGES if s in st}
            total = st["total"]["median"] / b
            vals["other"] = max(total - sum(vals.values()), 0.0)
            vals["total"] = total
            rows.append((batch, path, vals))
    return rows


def _bars(ax, results: dict) -> None:
    rows = per_sample_stages(results)
    xs, labels, x, last_batch = [], [], 0.0, None
    for batch, path, vals in rows:
        if last_batch is not None and batch != last_batch:
            x += 0.6                                                   # a gap between batch groups
        bottom = 0.0
        for stage in (*STAGES, "other"):
            h = vals.get(stage, 0.0)
            if h > 0:
                ax.bar(x, h, bottom=bottom, color=STAGE_COLORS[stage], width=0.8,
                       label=stage if not xs else None)
                bottom += h
        ax.text(x, vals["total"] * 1.08, f"{vals['total']:.3g}", ha="center", va="bottom", fontsize=7)
        xs.append(x)
        labels.append(f"{PATH_LABELS[path]}\nbatch {batch}")
        x += 1.0
        last_batch = batch
    cuda = str(results.get("device", "cpu")).startswith("cuda")
    targets = sorted(GPU_TARGETS if cuda else CPU_TARGETS, reverse=True)
    top = max(max(v["total"] for _, _, v in rows), max(t for t, _ in targets))
    above = None
    for value, label in targets:
        ax.axhline(value, color="0.3", ls="--", lw=0.8)
        crowded = above is not None and above - value < 0.06 * top        # a label just above: write below the line
        ax.text(xs[-1] + 0.55, value, label, fontsize=7, va="top" if crowded else "bottom", ha="left", color="0.3")
        above = value
    ax.set_ylim(0, top * 1.35)                                          # room for the legend above the bars
    ax.set_xticks(xs, labels, fontsize=7)
    ax.set_xlim(-0.6, xs[-1] + 2.9)
    ax.set_ylabel("seconds per sample (median)")
    title = "whole pipeline by stage, paper sizes, random weights"
    if results.get("bf16_skipped"):
        title += "\n(bf16 paths not timed: no bf16 units on this device)"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left", ncol=6)


def _scaling(axes, sc: dict) -> None:
    def line(ax, table: dict, xlabel: str, ylabel: str, title: str, logx: bool = False):
        keys = sorted(table, key=int)
        ax.plot([int(k) for k in keys], [table[k]["median"] for k in keys], "o-", color="#1f77b4")
        for k in keys:
            ax.annotate(f"{table[k]['median']:.3g}", (int(k), table[k]["median"]), textcoords="offset points",
                        xytext=(0, 5), ha="center", fontsize=7)
        if logx:
            ax.set_xscale("log")
        ax.set_xticks([int(k) for k in keys], [f"{int(k):,}" for k in keys], fontsize=7)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, max(table[k]["median"] for k in keys) * 1.25)

    path = PATH_LABELS.get(sc.get("path", ""), sc.get("path", ""))
    line(axes[0], sc["length_batch1"], "motion length (frames)", "seconds per call", f"length, batch 1 ({path})")
    line(axes[1], sc["batch_per_sample"], "batch size", "seconds per sample", f"batch, 196 frames ({path})")
    db = {k: v["b1"]["retrieval"] for k, v in sc["database"].items()}
    line(axes[2], db, "database rows", "seconds per call", "retrieval, batch 1", logx=True)


def plot_generation(results: dict, path: str | os.PathLike, source: str = "<results>") -> Path:
    """Draw `results` (a generate benchmark's JSON, as a dict) to the PNG `path`, written atomically."""
    _check(results, source)
    sc = results.get("scaling")
    fig = plt.figure(figsize=(13, 4.6) if sc else (8, 4.6))
    grid = fig.add_gridspec(1, 4 if sc else 1, width_ratios=[2.2, 1, 1, 1] if sc else [1])
    _bars(fig.add_subplot(grid[0, 0]), results)
    if sc:
        _scaling([fig.add_subplot(grid[0, i]) for i in (1, 2, 3)], sc)
    fig.suptitle(f"generation benchmark — {results.get('date', '?')} — {results.get('machine', '?')} — torch "
                 f"{results.get('torch', '?')}", fontsize=9)
    fig.tight_layout()
    out = Path(path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="a utils.benchmarks.generate --json file")
    ap.add_argument("--out", default=None, help="PNG to write (default: the JSON's path with .png)")
    args = ap.parse_args(argv)
    try:
        try:
            results = json.loads(Path(args.json).read_text())
        except (OSError, ValueError) as err:
            raise PlotError(f"{_MOD}: {args.json}: cannot be read as JSON ({err})") from None
        out = plot_generation(results, args.out or Path(args.json).with_suffix(".png"), source=args.json)
    except PlotError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"{_MOD}: wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
