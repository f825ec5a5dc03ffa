"""Does a corpus of a million pairs train in the memory of Multi30k? Time to prepare it, peak memory of each.

    python scripts/bench_memory.py [--pairs 1000000] [--steps 200] [--workdir .cache/bench_memory]

Builds a synthetic line-parallel corpus of --pairs pairs (each joins two random Multi30k training pairs, so its
sentences and alignment stay real), then runs train.py (small model) on it and on the shipped Multi30k, each for
--steps steps with one evaluation, from an empty cache so the preparation (reading into the Arrow cache,
training SentencePiece, encoding) is timed cold. Peak memory is each training process's maximum resident set.
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MULTI30K = ROOT / "data" / "multi30k"


def synthetic_corpus(folder: Path, pairs: int, seed: int = 1) -> str:
    """Write folder/train.{de,en}.gz (pairs lines) and return the prefix; reused if already there."""
    prefix = folder / f"train{pairs}"
    if all(Path(f"{prefix}.{lang}.gz").is_file() for lang in ("de", "en")):
        return str(prefix)
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(MULTI30K / "train.de.gz", "rt", encoding="utf-8") as f:
        de = f.read().splitlines()
    with gzip.open(MULTI30K / "train.en.gz", "rt", encoding="utf-8") as f:
        en = f.read().splitlines()
    rng = random.Random(seed)
    with gzip.open(f"{prefix}.de.gz", "wt", encoding="utf-8", compresslevel=1) as out_de, \
            gzip.open(f"{prefix}.en.gz", "wt", encoding="utf-8", compresslevel=1) as out_en:
        for _ in range(pairs):
            i, j = rng.randrange(len(de)), rng.randrange(len(de))
            out_de.write(f"{de[i]} {de[j]}\n")
            out_en.write(f"{en[i]} {en[j]}\n")
    return str(prefix)


def log_time(log: str, pattern: str) -> datetime | None:
    match = re.search(r"^\[([\d-]+ [\d:,]+)\]\[[^]]+\]\[\w+\] - " + pattern, log, re.MULTILINE)
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f") if match else None


def seconds_between(log: str, start: str | datetime, end: str) -> float | None:
    a, b = start if isinstance(start, datetime) else log_time(log, start), log_time(log, end)
    return round((b - a).total_seconds(), 1) if a and b else None


def train(name: str, train_prefix: str, steps: int, workdir: Path) -> dict:
    run_dir, cache = workdir / f"run_{name}", workdir / f"cache_{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.rmtree(cache, ignore_errors=True)  # cold: read, SentencePiece and encoding all happen
    command = [sys.executable, str(ROOT / "train.py"), f"data.train={train_prefix}", f"data.cache_dir={cache}",
               f"trainer.max_steps={steps}", f"trainer.eval_every={steps}", "trainer.progress=false",
               "trainer.heatmap_sentences=0", f"hydra.run.dir={run_dir}"]
    started, launched = time.perf_counter(), datetime.now()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    log = (run_dir / "train.log").read_text()
    if status != 0:
        sys.exit(f"{name}: train.py failed:\n{process.stderr.read().decode()[-2000:]}")
    results = json.loads((run_dir / "results.json").read_text())
    return {
        "pairs": int(re.search(r"corpus train: (\d+) pairs", log).group(1)),
        "start_and_read_into_arrow_s": seconds_between(log, launched, r"corpus train:"),
        "sentencepiece_s": seconds_between(log, "SentencePiece model: training", "SentencePiece model: trained"),
        "encode_and_filter_s": seconds_between(log, "SentencePiece model: trained", "training pairs: kept"),
        "ready_to_train_s": seconds_between(log, launched, "model: "),
        "peak_rss_before_training_mb": int(re.search(r"peak memory so far (\d+) MB", log).group(1)),
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),  # kilobytes on Linux; training included
        "train_target_tokens_per_s": results["train_target_tokens_per_s"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workdir", default=str(ROOT / ".cache" / "bench_memory"))
    args = parser.parse_args()
    workdir = Path(args.workdir)

    started = time.perf_counter()
    synthetic = synthetic_corpus(workdir / "corpus", args.pairs)
    print(f"synthetic corpus: {synthetic}.{{de,en}}.gz ({time.perf_counter() - started:.0f} s)", flush=True)
    runs = {"multi30k": train("multi30k", str(MULTI30K / "train"), args.steps, workdir)}
    runs["synthetic"] = train("synthetic", synthetic, args.steps, workdir)

    keys = list(runs["multi30k"])
    print(f"\n{'':28}" + "".join(f"{name:>14}" for name in runs))
    for key in keys:
        print(f"{key:28}" + "".join(f"{str(run[key]):>14}" for run in runs.values()))
    ratio = runs["synthetic"]["peak_rss_mb"] / runs["multi30k"]["peak_rss_mb"]
    print(json.dumps({"steps": args.steps, **runs, "peak_rss_ratio_synthetic_vs_multi30k": round(ratio, 2)}))


if __name__ == "__main__":
    main()
