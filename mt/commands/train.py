"""The command behind train.py and `mt-train`: train as configured (mt/configs/train.yaml, typed by mt/config.py),
writing everything into the run directory, and point outputs/latest at it."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from omegaconf import OmegaConf

from mt import cli, config, distributed
from mt.allocator import cap_kernel_cache, restart_under_mimalloc
from mt.config import TrainConfig
from mt.distillation import check_distillation
from mt.dropout import check_dropout_ramp
from mt.files import exclusive, point_link, write_text
from mt.trainer import Trainer

log = logging.getLogger(__name__)
LATEST = "latest"  # outputs/latest: the newest run under outputs/, for commands pasted from the README

config.register()


def run(cfg: TrainConfig, run_dir: str | Path) -> dict:
    """Train as configured, writing everything into run_dir; returns what results.json holds ({} off rank 0)."""
    run_dir = Path(run_dir)
    check_distillation(cfg.trainer)
    check_dropout_ramp(cfg.trainer.initial_dropout, cfg.trainer.dropout_ramp_steps)
    # One run per run directory: rank 0 holds it (under torchrun every rank writes into the same one).
    held = exclusive(run_dir, "train.py") if distributed.launched_as_main() else contextlib.nullcontext()
    with held:
        return _train_in(cfg, run_dir)


def _train_in(cfg: TrainConfig, run_dir: Path) -> dict:
    trainer = None
    try:
        trainer = Trainer(cfg, run_dir)
        if trainer.world.is_main:
            write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
            log.info("run directory: %s", run_dir)
            link_latest(run_dir)
        if cfg.trainer.resume:
            trainer.resume()
        results = trainer.train()
        distributed.wait_for_all(trainer.world)
        return results
    finally:
        if trainer is not None:
            distributed.leave(trainer.world)


def link_latest(run_dir: Path) -> None:
    """outputs/latest -> this run, where the run directory lies under ./outputs (Hydra's default)."""
    outputs = Path.cwd() / "outputs"
    link = outputs / LATEST
    if link.exists() and not link.is_symlink():
        return  # a run directory of that name: left alone
    if outputs.resolve() in run_dir.resolve().parents:
        point_link(link, run_dir)
        log.info("%s now points to it", os.path.relpath(link))


@cli.hydra_command("train")
def _train(cfg) -> None:
    run(cli.typed(cfg), cli.run_dir())


def main() -> None:
    cap_kernel_cache()  # before torch's first oneDNN call, and carried into the restart below
    restart_under_mimalloc()  # the process starts again under mimalloc where it can (mt/allocator.py)
    _train()
    distributed.end_launched_process()  # the run is done: skip a teardown that can abort it
