"""Benchmark loading the retrieval query path: the inference-only `RetrievalQueryEncoder` against the full
`BMMRetriever`, from the same paper-size retriever checkpoint.

    python -m utils.benchmarks.query_encoder [--json PATH] [--keep DIR]

A retriever with the paper config (six 4-layer 512-d part encoders, momentum copies, two 65,536-row queues) and a
DistilBERT-size text tower with random weights (offline) is saved once as a checkpoint. Each loader then runs in a
fresh Python process (so its memory is its own): load time (wall clock, model construction included) and the
process's peak resident memory (VmHWM) and its resident memory (VmRSS) after loading, each minus the resident
memory of the same process before it (torch imported). Both
encoders embed the same prompts; the table says whether the embeddings are bit-equal.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(2)
kind, path, out = sys.argv[1:4]
def status(key):
    return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) / 1024   # MiB
before = status("VmRSS")
t0 = time.perf_counter()
if kind == "full":
    from models.retriever import BMMRetriever
    model = BMMRetriever.from_checkpoint(path)
else:
    from models.retrieval_database import RetrievalQueryEncoder
    model = RetrievalQueryEncoder.from_checkpoint(path)
seconds = time.perf_counter() - t0
peak, now = status("VmHWM"), status("VmRSS")
with torch.no_grad():
    emb = model.encode_text(["a person walks forward and waves", "someone jumps"])
torch.save(emb, out)
params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
print(json.dumps({"seconds": seconds, "peak_mib": peak - before, "resident_mib": now - before, "tensors": params}))
"""


def paper_checkpoint(path: Path) -> None:
    import torch

    from models.retriever import BMMRetriever, RetrieverConfig
    from utils.checkpoint import save_checkpoint
    from utils.config import to_dict

    torch.manual_seed(0)
    cfg = RetrieverConfig(text_encoder="distilbert", text_random_init=True)
    model = BMMRetriever(cfg)
    save_checkpoint(path, stage="retriever", config={"model": to_dict(cfg)}, model=model.state_dict(),
                    extra={"fingerprint": model.weights_fingerprint()})     # as train_retriever.py writes it


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", default=None, help="also write the results as JSON to this path")
    parser.add_argument("--keep", default=None, help="folder for the checkpoint (default: a temporary one)")
    args = parser.parse_args(argv)
    import torch

    from utils.atomic import atomic_write_text

    folder = Path(args.keep or tempfile.mkdtemp(prefix="remomask-qenc-"))
    ckpt = folder / "retriever_paper_size.pt"
    if not ckpt.is_file():
        paper_checkpoint(ckpt)
    repo = Path(__file__).resolve().parents[2]
    results = {}
    for kind in ("full", "query"):
        out = folder / f"{kind}_emb.pt"
        proc = subprocess.run([sys.executable, "-c", CHILD, kind, str(ckpt), str(out)], cwd=repo, check=True,
                              capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(repo)})
        results[kind] = json.loads(proc.stdout.strip().splitlines()[-1])
        results[kind]["emb"] = torch.load(out, weights_only=True)
    equal = bool(torch.equal(results["full"].pop("emb"), results["query"].pop("emb")))
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "machine": machine,
              "checkpoint_mib": ckpt.stat().st_size / 2 ** 20, "bit_equal": equal, **results}
    print("| loader | load time (s) | peak memory added (MiB) | resident after load (MiB) | parameters + buffers |")
    print("|---|---:|---:|---:|---:|")
    for kind, name in (("full", "BMMRetriever.from_checkpoint"), ("query", "RetrievalQueryEncoder.from_checkpoint")):
        r = results[kind]
        print(f"| {name} | {r['seconds']:.2f} | {r['peak_mib']:.0f} | {r['resident_mib']:.0f} | "
              f"{r['tensors'] / 1e6:.1f}M |")
    print(f"\ncheckpoint {report['checkpoint_mib']:.0f} MiB; embeddings bit-equal: {equal}; {report['machine']}, "
          f"{report['date']}")
    if args.json:
        atomic_write_text(args.json, json.dumps(report, indent=2) + "\n")
    return report


if __name__ == "__main__":
    main()
