"""Training memory and speed: the allocators side by side, and a million pairs against Multi30k.

    python scripts/bench_memory.py allocators [--steps 300] [--reps 2] [OVERRIDE ...]
    python scripts/bench_memory.py corpus [--pairs 1000000] [--steps 200] [OVERRIDE ...]

allocators: train.py for --steps steps under each malloc in turn, --reps times, alternating (glibc, mimalloc, ...):
glibc's own (MT_ALLOCATOR=system), mimalloc as train.py runs it by itself (mt/allocator.py) and with mimalloc's
default options, and tcmalloc and jemalloc where the system has them (preloaded, MT_ALLOCATOR=system). Reports
each one's median target tokens/s, peak resident memory (the process's maximum), and resident memory at the first
and last logged step (train/memory_mb): flat, or growing.

corpus: builds a synthetic line-parallel corpus of --pairs pairs (each joins two random Multi30k training pairs,
so its sentences and alignment stay real), then runs train.py on it and on the shipped Multi30k, --steps steps
each with one evaluation, from an empty cache, so the preparation (reading into the Arrow cache, training
SentencePiece, encoding) is timed cold.

OVERRIDEs go to every train.py run (e.g. model=tiny). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mt.alignment.links import read_pharaoh, to_pharaoh
from mt.allocator import bundled_mimalloc
from mt.files import read_lines

ROOT = Path(__file__).resolve().parent.parent
MULTI30K = ROOT / "data" / "multi30k"
SYSTEM_ALLOCATORS = {"tcmalloc": "libtcmalloc_minimal.so.4", "jemalloc": "libjemalloc.so.2"}
LIBRARY_FOLDERS = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"]


def train(name: str, overrides: list[str], workdir: Path, environment: dict | None = None, cold: bool = False) -> dict:
    """Run train.py; its figures: wall time, peak RSS (training included), speed, memory by step."""
    run_dir, cache = workdir / f"run_{name}", workdir / f"cache_{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    if cold:
        shutil.rmtree(cache, ignore_errors=True)  # cold: read, SentencePiece and encoding all happen
    command = [sys.executable, str(ROOT / "train.py"), f"data.cache_dir={cache}", "trainer.progress=false",
               "trainer.heatmap_sentences=0", f"hydra.run.dir={run_dir}", *overrides]
    started, launched = time.perf_counter(), datetime.now()
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                               env={**os.environ, **(environment or {})})
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        sys.exit(f"{name}: train.py failed:\n{process.stderr.read().decode()[-2000:]}")
    log = (run_dir / "train.log").read_text()
    results = json.loads((run_dir / "results.json").read_text())
    events = EventAccumulator(str(run_dir / "tb"))
    events.Reload()
    memory = [(e.step, e.value) for e in events.Scalars("train/memory_mb")]
    return {
        "log": log, "launched": launched,
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(usage.ru_maxrss / 1024),  # kilobytes on Linux
        "train_target_tokens_per_s": results["train_target_tokens_per_s"],
        "memory_mb_first_log": round(memory[0][1]), "memory_mb_last_log": round(memory[-1][1]),
        "allocator": re.search(r"memory allocator: (\w+)", log).group(1),
    }


# ---------------------------------------------------------------- allocators

def system_allocators() -> dict[str, str]:
    found = {}
    for name, library in SYSTEM_ALLOCATORS.items():
        paths = [path for folder in LIBRARY_FOLDERS for path in glob.glob(f"{folder}/{library}")]
        if paths:
            found[name] = paths[0]
    return found


def compare_allocators(args, overrides: list[str], workdir: Path) -> dict:
    contestants = {"glibc": {"MT_ALLOCATOR": "system"}, "mimalloc (train.py's own)": {}}
    if bundled_mimalloc() is not None:
        contestants["mimalloc, its default options"] = {"MT_ALLOCATOR": "system", "LD_PRELOAD": str(bundled_mimalloc())}
    for name, path in system_allocators().items():
        contestants[name] = {"MT_ALLOCATOR": "system", "LD_PRELOAD": path}
    overrides = [f"trainer.max_steps={args.steps}", f"trainer.eval_every={args.steps}", *overrides]
    runs: dict[str, list[dict]] = {name: [] for name in contestants}
    train("warm-up", overrides, workdir)  # SentencePiece and the Arrow cache, so no contestant pays for them
    for rep in range(args.reps):
        for name, environment in contestants.items():
            run = train(re.sub(r"\W+", "_", name), overrides, workdir, environment)
            print(f"rep {rep + 1} {name}: {run['train_target_tokens_per_s']:.0f} target tokens/s, peak "
                  f"{run['peak_rss_mb']} MB, memory {run['memory_mb_first_log']} -> {run['memory_mb_last_log']} MB "
                  f"(served by {run['allocator']})", flush=True)
            runs[name].append(run)
    table = {}
    for name, done in runs.items():
        table[name] = {
            "train_target_tokens_per_s": round(statistics.median(r["train_target_tokens_per_s"] for r in done)),
            "peak_rss_mb": max(r["peak_rss_mb"] for r in done),
            "memory_mb_first_log": round(statistics.median(r["memory_mb_first_log"] for r in done)),
            "memory_mb_last_log": round(statistics.median(r["memory_mb_last_log"] for r in done)),
            "served_by": sorted({r["allocator"] for r in done}),
        }
    print(f"\n{args.steps} steps, medians of {args.reps}     target tokens/s   peak RSS   memory first -> last log")
    for name, row in table.items():
        print(f"  {name:28s} {row['train_target_tokens_per_s']:14,d} {row['peak_rss_mb']:8,d} MB   "
              f"{row['memory_mb_first_log']:,} -> {row['memory_mb_last_log']:,} MB")
    reference = table.get("tcmalloc") or table["glibc"]
    ours = table["mimalloc (train.py's own)"]
    return {"steps": args.steps, "reps": args.reps, "allocators": table,
            "speed_vs_" + ("tcmalloc" if "tcmalloc" in table else "glibc"):
                round(ours["train_target_tokens_per_s"] / reference["train_target_tokens_per_s"], 3)}


# ---------------------------------------------------------------- a million pairs

def synthetic_corpus(folder: Path, pairs: int, seed: int = 1) -> str:
    """Write folder/trainN.{de,en}.gz (pairs lines) and their word links, folder/trainN.de-en.align.gz (the
    shipped links of the two joined pairs, the second's moved past the first's words); return the prefix. Reused
    if already there."""
    prefix = folder / f"train{pairs}"
    if all(Path(f"{prefix}.{suffix}.gz").is_file() for suffix in ("de", "en", "de-en.align")):
        return str(prefix)
    folder.mkdir(parents=True, exist_ok=True)
    de, en, links = (list(read_lines(MULTI30K / f"train.{suffix}.gz")) for suffix in ("de", "en", "de-en.align"))
    rng = random.Random(seed)
    with gzip.open(f"{prefix}.de.gz", "wt", encoding="utf-8", compresslevel=1) as out_de, \
            gzip.open(f"{prefix}.en.gz", "wt", encoding="utf-8", compresslevel=1) as out_en, \
            gzip.open(f"{prefix}.de-en.align.gz", "wt", encoding="utf-8", compresslevel=1) as out_links:
        for _ in range(pairs):
            i, j = rng.randrange(len(de)), rng.randrange(len(de))
            out_de.write(f"{de[i]} {de[j]}\n")
            out_en.write(f"{en[i]} {en[j]}\n")
            src_offset, tgt_offset = len(de[i].split()), len(en[i].split())
            moved = [(a + src_offset, b + tgt_offset) for a, b in read_pharaoh(links[j])[1]]
            out_links.write(to_pharaoh([*read_pharaoh(links[i])[1], *moved]) + "\n")
    return str(prefix)


def log_time(log: str, pattern: str) -> datetime | None:
    match = re.search(r"^\[([\d-]+ [\d:,]+)\]\[[^]]+\]\[\w+\] - " + pattern, log, re.MULTILINE)
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f") if match else None


def seconds_between(log: str, start: str | datetime, end: str) -> float | None:
    a, b = start if isinstance(start, datetime) else log_time(log, start), log_time(log, end)
    return round((b - a).total_seconds(), 1) if a and b else None


def preparation(run: dict) -> dict:
    log, launched = run["log"], run["launched"]
    return {
        "pairs": int(re.search(r"corpus train: (\d+) pairs", log).group(1)),
        "start_and_read_into_arrow_s": seconds_between(log, launched, r"corpus train:"),
        "sentencepiece_s": seconds_between(log, "SentencePiece model: training", "SentencePiece model: trained"),
        "encode_and_filter_s": seconds_between(log, "SentencePiece model: trained", "training pairs: kept"),
        "ready_to_train_s": seconds_between(log, launched, "model: "),
        "peak_rss_before_training_mb": int(re.search(r"peak memory so far (\d+) MB", log).group(1)),
        **{key: run[key] for key in ("wall_s", "peak_rss_mb", "train_target_tokens_per_s")},
    }


def compare_corpora(args, overrides: list[str], workdir: Path) -> dict:
    started = time.perf_counter()
    synthetic = synthetic_corpus(workdir / "corpus", args.pairs)
    print(f"synthetic corpus: {synthetic}.{{de,en}}.gz ({time.perf_counter() - started:.0f} s)", flush=True)
    steps = [f"trainer.max_steps={args.steps}", f"trainer.eval_every={args.steps}"]
    runs = {"multi30k": preparation(train("multi30k", [*steps, *overrides], workdir, cold=True))}
    runs["synthetic"] = preparation(train("synthetic", [*steps, *overrides, f"data.train={synthetic}",
                                                        f"align.links_file={synthetic}.de-en.align.gz"], workdir,
                                          cold=True))
    print(f"\n{'':28}" + "".join(f"{name:>14}" for name in runs))
    for key in runs["multi30k"]:
        print(f"{key:28}" + "".join(f"{str(run[key]):>14}" for run in runs.values()))
    ratio = runs["synthetic"]["peak_rss_mb"] / runs["multi30k"]["peak_rss_mb"]
    return {"steps": args.steps, **runs, "peak_rss_ratio_synthetic_vs_multi30k": round(ratio, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    allocators = commands.add_parser("allocators", help="train.py under each allocator, side by side")
    allocators.add_argument("--steps", type=int, default=300)
    allocators.add_argument("--reps", type=int, default=2)
    corpus = commands.add_parser("corpus", help="a million synthetic pairs against Multi30k")
    corpus.add_argument("--pairs", type=int, default=1_000_000)
    corpus.add_argument("--steps", type=int, default=200)
    for command in (allocators, corpus):
        command.add_argument("--workdir", default=str(ROOT / ".cache" / "bench_memory"))
        command.add_argument("overrides", nargs="*", help="train.py overrides for every run, e.g. model=tiny")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    compare = compare_allocators if args.command == "allocators" else compare_corpora
    print(json.dumps(compare(args, args.overrides, workdir)))


if __name__ == "__main__":
    main()
