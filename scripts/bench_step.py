"""Where a training step's time goes: the real Trainer of `python train.py OVERRIDES` (same config, data, model,
precision and allocator), timed step by step, then broken down by operator with torch.profiler.

    python scripts/bench_step.py [--steps 100] [--warmup 30] [--profile-steps 20] [OVERRIDE ...]

Reports training steps/s and target tokens/s over --steps optimizer steps (Trainer.train_step, batches made as
training makes them), the milliseconds a batch takes to make (reading, sampling, padding, the head's gold links),
one greedy decoding of the dev set as evaluation does it, and the share of the profiled steps' operator time in
each family (matrix products, dropout's random numbers, copies and casts, the loss's exp/log-softmax, norms, ...).
The profiler slows small operators, so its shares are a guide and steps/s is measured without it. Nothing else
should run beside it. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Operator families, first match wins; the rest is "other".
FAMILIES = {
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::matmul", "aten::linear", "mkldnn"),
    "dropout random numbers": ("aten::random_", "aten::bernoulli_", "aten::native_dropout", "aten::ge"),
    "copies and casts": ("aten::copy_", "aten::_to_copy", "aten::to", "aten::clone", "aten::contiguous"),
    "loss (exp, log-softmax)": ("aten::exp", "aten::_log_softmax", "aten::log_softmax", "aten::scatter_add_"),
    "attention softmax": ("aten::_softmax", "aten::_softmax_backward_data", "aten::masked_fill"),
    "layer norm": ("aten::native_layer_norm",),
    "optimizer and average": ("Optimizer", "aten::_foreach", "aten::lerp", "aten::addcdiv", "aten::addcmul"),
    "allocation": ("aten::empty",),
}


def family(name: str) -> str:
    return next((kind for kind, prefixes in FAMILIES.items() if name.startswith(prefixes)), "other")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100, help="timed optimizer steps")
    p.add_argument("--warmup", type=int, default=30, help="untimed steps first (kernels compiled, memory grown)")
    p.add_argument("--profile-steps", type=int, default=20, help="steps under torch.profiler (0: none)")
    p.add_argument("overrides", nargs="*", help="train.py's key=value settings")
    return p.parse_args(argv)


def main() -> None:
    args = parse_args()
    from mt.allocator import cap_kernel_cache, restart_under_mimalloc

    cap_kernel_cache()  # as train.py runs
    restart_under_mimalloc()
    import torch
    from hydra import compose, initialize_config_dir
    from torch.profiler import ProfilerActivity, profile

    from mt import cli, config
    from mt.allocator import allocator
    from mt.trainer import Trainer

    config.register()
    with initialize_config_dir(config_dir=str(ROOT / "mt" / "configs"), version_base="1.3"):
        cfg = cli.typed(compose("train", overrides=[*args.overrides, "trainer.progress=false"]))
    with tempfile.TemporaryDirectory(prefix="bench-step-") as run_dir:
        trainer = Trainer(cfg, Path(run_dir))
        batches = trainer.data.stream(trainer)
        trainer.model.train()

        def train(steps: int) -> tuple[float, int]:
            started, tokens = time.perf_counter(), 0
            for _ in range(steps):
                tokens += trainer.train_step([next(batches) for _ in range(cfg.trainer.accum_steps)])["tokens"]
            return time.perf_counter() - started, tokens

        train(args.warmup)
        seconds, tokens = train(args.steps)
        started = time.perf_counter()
        for _ in range(args.steps):
            next(batches)
        batch_ms = (time.perf_counter() - started) / args.steps * 1000
        started = time.perf_counter()
        trainer.validation.scores(trainer.data.dev)
        dev_seconds = time.perf_counter() - started
        shares = {}
        if args.profile_steps:
            with profile(activities=[ProfilerActivity.CPU]) as profiled:
                train(args.profile_steps)
            for event in profiled.key_averages():
                kind = family(event.key)
                shares[kind] = shares.get(kind, 0.0) + event.self_cpu_time_total
            total = sum(shares.values()) or 1.0
            shares = {kind: round(100 * value / total, 1) for kind, value in sorted(shares.items(),
                                                                                      key=lambda kv: -kv[1])}

    figures = {
        "threads": torch.get_num_threads(), "allocator": allocator(), "precision": trainer.precision,
        "kernel_cache": os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"), "overrides": args.overrides,
        "steps": args.steps, "steps_per_s": round(args.steps / seconds, 3),
        "target_tokens_per_s": round(tokens / seconds, 1), "ms_per_step": round(seconds / args.steps * 1000, 1),
        "ms_per_batch_made": round(batch_ms, 1), "dev_decode_s": round(dev_seconds, 2),
        "profiled_share_percent": shares,
    }
    print(f"{figures['steps_per_s']} steps/s, {figures['target_tokens_per_s']:.0f} target tokens/s "
          f"({figures['ms_per_step']} ms a step, of which making its batch {figures['ms_per_batch_made']} ms); "
          f"dev decoded in {figures['dev_decode_s']} s; {figures['threads']} threads, {figures['allocator']}, "
          f"{figures['precision']}")
    for kind, share in shares.items():
        print(f"  {kind:28s} {share:5.1f}% of profiled operator time")
    print(json.dumps(figures))


if __name__ == "__main__":
    sys.exit(main())
