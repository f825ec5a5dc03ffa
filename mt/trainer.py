"""The training loop: batches -> label-smoothed loss -> optimizer and schedule; every eval_every steps the dev set
is translated and scored, checkpoints and heatmaps written; at the end the best checkpoint is scored on the tests.

Under torchrun each process trains on its share of the batches (DistributedDataParallel averages gradients);
rank 0 alone evaluates and writes the run directory, and tells the others whether to stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mt import data as corpus_data
from mt import distributed
from mt.alignment.head import trained_head
from mt.allocator import allocator_report, kernel_cache_report, release_free_memory
from mt.averaging import ExponentialMovingAverage
from mt.checkpoint import (
    RunCheckpoints,
    check_resumable,
    load_checkpoint,
    model_payload,
    random_state,
    restore_random_state,
)
from mt.config import OptimConfig, Optimizer, Schedule, TrainConfig, passes_per_batch
from mt.distillation import MovingAverageTeacher
from mt.dropout import DropoutRamp
from mt.evaluate import Scores
from mt.files import InputError, write_text
from mt.hardware import autocast_for, peak_memory_mb, select_device, select_precision
from mt.huggingface import Imported, from_transformers
from mt.interrupt import Interrupted, StopRequests
from mt.loss import alignment_loss, translation_loss
from mt.model import ModelConfig, Transformer
from mt.tokenizer import Tokenizer
from mt.training_data import TrainingData
from mt.training_log import TrainingLog
from mt.validation import Validation

log = logging.getLogger(__name__)


def lr_factor(cfg: OptimConfig, steps: int, step: int) -> float:
    """The fraction of optim.lr that optimizer step `step` + 1 of `steps` uses: a linear warm-up, then cfg.schedule."""
    warmup = max(1, cfg.warmup_steps)
    if cfg.schedule == Schedule.linear:
        after = max(0.0, (steps - step) / max(1, steps - warmup + 1))  # 1 at warm-up's end, then down by equal steps
    else:
        after = math.sqrt(warmup / (step + 1))
    return min((step + 1) / warmup, after)


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, steps: int):
    """The optimizer and its learning-rate schedule for a run of `steps` optimizer steps."""
    kind = {Optimizer.adam: torch.optim.Adam, Optimizer.adamw: torch.optim.AdamW}[cfg.name]
    # fused: one kernel over all parameters instead of a loop of small ones (docs/benchmark.md);
    # the same update, rounded differently in the last bit.
    optimizer = kind(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                     fused=True)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, functools.partial(lr_factor, cfg, steps))


def apply_gradients(model: torch.nn.Module, optimizer, schedule, scaler: torch.amp.GradScaler, clip: float):
    """Clip the (unscaled) gradients to norm `clip` (0: no clipping), step, and clear them; the norm and the lr
    the step used."""
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip if clip > 0 else float("inf"))
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    lr = schedule.get_last_lr()[0]
    schedule.step()
    return grad_norm, lr


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """Where training ends: trainer.max_steps or trainer.max_epochs, whichever comes first."""
    t = cfg.trainer
    limits = [t.max_steps] if t.max_steps else []
    if t.max_epochs:
        limits.append(t.max_epochs * max(1, batches_per_epoch // t.accum_steps))
    if not limits:
        raise InputError("set trainer.max_steps or trainer.max_epochs (or both): training needs an end")
    return min(limits)


def with_imported_model(cfg: TrainConfig, world: distributed.World) -> tuple[TrainConfig, Imported | None]:
    """With init.from_hf: that model, and `cfg` with its architecture (the dropout rates stay cfg's)."""
    if not cfg.init.from_hf:
        return cfg, None
    with distributed.main_first(world):  # one download
        imported = from_transformers(cfg.init.from_hf)
    rates = {key: getattr(cfg.model, key) for key in ("dropout", "attention_dropout", "activation_dropout")}
    return dataclasses.replace(cfg, model=dataclasses.replace(imported.config, **rates)), imported


def build_model(cfg: ModelConfig, tokenizer: Tokenizer, imported: Imported | None) -> Transformer:
    """A model of `cfg` for `tokenizer`'s vocabulary: freshly initialized, or holding the imported weights."""
    special = tokenizer.special
    model = Transformer(dataclasses.replace(cfg, vocab_size=tokenizer.vocab_size, pad_id=special.pad,
                                            bos_id=special.bos, eos_id=special.eos))
    if imported is not None:
        model.load_state_dict(imported.weights)
    return model


class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.checkpoints = RunCheckpoints(self.run_dir / "checkpoints", cfg.trainer.keep_checkpoints)
        self.world, self.device = distributed.join(select_device(cfg.trainer.device))
        if not self.world.is_main:
            logging.getLogger("mt").setLevel(logging.WARNING)  # one log: rank 0's
        self.precision = select_precision(cfg.trainer.precision, self.device)
        self.autocast = autocast_for(self.precision, self.device)
        torch.manual_seed(cfg.trainer.seed)
        if self.world.is_main:
            self.checkpoints.remove_partial_writes()

        cfg, imported = with_imported_model(cfg, self.world)
        self.cfg = cfg
        aligning = cfg.align.weight > 0
        self.data = TrainingData(cfg, self.world, self.run_dir, aligning, imported and imported.tokenizer)
        self.tokenizer = self.data.tokenizer
        self.alignment_head = (trained_head(cfg.align, cfg.model.decoder_layers, cfg.model.n_heads)
                               if aligning and self.data.has_links else None)

        self.model = build_model(cfg.model, self.tokenizer, imported).to(self.device)
        self.model_cfg = self.model.cfg
        self.replicas = self.model  # what the training steps run: DDP's wrapper under torchrun (see train)
        self.total_steps = total_steps(cfg, self.data.batches_per_epoch)  # where training ends
        self.optimizer, self.schedule = build_optimizer(self.model, cfg.optim, self.total_steps)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        t = cfg.trainer
        self.ema = ExponentialMovingAverage(self.model, t.ema_decay) if t.ema_decay > 0 else None
        self.teacher = MovingAverageTeacher(self.model, self.ema, self.autocast, t)
        self.dropout_ramp = DropoutRamp(self.model, self.model_cfg.dropout, t.initial_dropout, t.dropout_ramp_steps)
        self.validation = Validation(self.model, self.tokenizer, t, self.device, self.precision)
        self.step, self.epoch, self.batch_in_epoch, self.best_bleu, self.stale_evals = 0, 0, 0, -1.0, 0
        log.info("model: %s, %.1fM parameters; device %s, precision %s%s; peak memory so far %.0f MB", self.model_cfg,
                 sum(p.numel() for p in self.model.parameters()) / 1e6, self.device, self.precision,
                 f", {self.world.size} processes" if self.world.active else "", peak_memory_mb())
        if self.device.type == "cpu":
            log.info(allocator_report())
            log.info(kernel_cache_report())

    # ------------------------------------------------------------ checkpoints

    def _state(self) -> dict:
        """last.pt: what translating needs, and everything a resumed run needs to go on as if never stopped."""
        return {
            **model_payload(self.model, self.tokenizer, self.alignment_head),
            "config": OmegaConf.to_container(OmegaConf.structured(self.cfg), enum_to_str=True),
            "optimizer": self.optimizer.state_dict(), "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(), "ema": self.ema.state_dict() if self.ema else None,
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "best_bleu": self.best_bleu, "stale_evals": self.stale_evals, **random_state(self.device),
        }

    def _save(self, best: tuple[str, Scores] | None = None, dev: Scores | None = None) -> None:
        """last.pt; after an evaluation (`dev`: the weights' scores) step_N.pt, and best.pt on a new `best`."""
        state = self._state()
        best_content = evaluated = None
        if best is not None:
            weights, scores = best
            model = state["model"]
            if weights == "ema":
                with self.ema.swapped_in(self.model):
                    model = {name: tensor.clone() for name, tensor in self.model.state_dict().items()}
            best_content = {**state, "model": model, "weights": weights, "dev": dataclasses.asdict(scores)}
        if dev is not None:
            evaluated = {**model_payload(self.model, self.tokenizer, self.alignment_head), "step": self.step,
                         "dev": dataclasses.asdict(dev)}
        self.checkpoints.save(state, self.step, best_content, evaluated)

    def resume(self) -> None:
        path = self.checkpoints.last
        # Rank 0 reads the checkpoint and sends it: other nodes need no shared file system.
        state = distributed.from_main(self.world, load_checkpoint(path) if self.world.is_main and path.exists()
                                      else None)
        if state is None:
            log.info("trainer.resume: no %s yet, starting from scratch", path)
            return
        check_resumable(state, path, self.model_cfg, self.tokenizer.checkpoint_fields())
        self.model.load_state_dict(state["model"])
        for part in ("optimizer", "schedule", "scaler"):
            getattr(self, part).load_state_dict(state[part])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        elif self.ema is not None:
            log.info("%s holds no weight average: the average starts from the resumed weights", path)
            self.ema = ExponentialMovingAverage(self.model, self.cfg.trainer.ema_decay)
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_bleu, self.stale_evals = state["best_bleu"], state["stale_evals"]
        restore_random_state(state)
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)

    # ------------------------------------------------------------ steps

    def train_step(self, batches: list[corpus_data.Batch]) -> dict:
        """One optimizer step over `batches` (on every rank), its loss normalized by all their target tokens (R-Drop:
        both passes'), so N processes equal one process accumulating N times as many batches. Sums are per pass."""
        t = self.cfg.trainer
        passes, tokens = passes_per_batch(t), sum(b.target_tokens for b in batches)
        all_tokens = distributed.sum_over_ranks(self.world, [tokens], self.device)[0] * passes
        self.dropout_ramp(self.step)
        total_loss = total_nll = total_alignment = total_kl = 0.0
        for i, batch in enumerate(batches):
            batch = batch.to(self.device) if passes == 1 else batch.to(self.device).twice()
            # Gradients are exchanged once, with the last batch's backward.
            last = i == len(batches) - 1
            with contextlib.nullcontext() if last or not self.world.active else self.replicas.no_sync():
                head = self.alignment_head if batch.alignment is not None else None
                with self.autocast():
                    out = self.replicas(batch.src, batch.tgt_in, **(head.pass_arguments() if head else {}))
                loss, nll, kl = translation_loss(out.logits, batch.tgt_out, t.label_smoothing, self.model_cfg.pad_id,
                                                 t.rdrop_weight, self.teacher(self.step, batch), t.distill_weight)
                if head is not None:
                    aligned = alignment_loss(head.weights(out), batch.alignment)
                    loss = loss + self.cfg.align.weight * aligned
                    total_alignment = total_alignment + aligned.detach()
                # DDP divides the summed gradients by the world size; multiplying by it here keeps the step
                # the gradient of (all ranks' loss) / (all ranks' tokens). Both are powers of two in tests: exact.
                self.scaler.scale(loss / all_tokens * self.world.size).backward()
            total_loss, total_nll, total_kl = total_loss + loss.detach(), total_nll + nll.detach(), total_kl + kl
        grad_norm, lr = apply_gradients(self.model, self.optimizer, self.schedule, self.scaler, t.clip_norm)
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        per_pass = {key: float(value) / passes for key, value in
                    (("loss_sum", total_loss), ("nll_sum", total_nll), ("alignment_sum", total_alignment))}
        return {**per_pass, "kl_sum": float(total_kl), "grad_norm": float(grad_norm), "lr": lr, "tokens": tokens}

    # ------------------------------------------------------------ evaluation

    def _eval_and_save(self, writer: SummaryWriter | None) -> bool:
        """Evaluate on dev and write checkpoints (rank 0); True on every rank if training should stop early."""
        stop = None
        if self.world.is_main:
            candidates = self.validation.candidates(self.data.dev, self.ema, writer, self.step)
            self.validation.draw_heatmaps(writer, self.data.dev, self.data.max_len, self.step)
            best = max(candidates, key=lambda candidate: candidate[1].bleu)
            improved = best[1].bleu > self.best_bleu
            self.best_bleu, self.stale_evals = (best[1].bleu, 0) if improved else (self.best_bleu, self.stale_evals + 1)
            self._save(best if improved else None, candidates[0][1])
            writer.flush()
            stop = 0 < self.cfg.trainer.patience <= self.stale_evals
        return distributed.from_main(self.world, stop)

    # ------------------------------------------------------------ loop

    def train(self) -> dict:
        """Train to the end or an early stop; results on rank 0, {} elsewhere. A signal saves, raises Interrupted."""
        t = self.cfg.trainer
        if self.world.active:
            self.replicas = distributed.replicate(self.model, self.device)
        writer = SummaryWriter(str(self.run_dir / "tb")) if self.world.is_main else None
        batches = self.data.stream(self)  # moves self.epoch and self.batch_in_epoch along
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (t.progress and self.world.is_main),
                   unit="step", dynamic_ncols=True)
        progress = TrainingLog(self.world, self.device, writer, bar, t)
        stop_early = False
        self.model.train()
        with StopRequests() as stop:
            while self.step < self.total_steps and not stop_early:
                stats = self.train_step([next(batches) for _ in range(t.accum_steps)])
                progress.add(stats)
                if self.step % t.log_every == 0 or self.step == self.total_steps:
                    progress.report(stats, self.step, self.epoch, self.alignment_head is not None)
                    release_free_memory()
                if self.step % t.eval_every == 0 or self.step == self.total_steps:
                    bar.clear()
                    with progress.clock_paused():
                        stop_early = self._eval_and_save(writer)
                    if stop_early:
                        log.info("no dev BLEU gain in %d evaluations: stopping early at step %d", t.patience, self.step)
                if distributed.any_rank(self.world, stop.signum is not None, self.device):
                    self._stop_on_signal(stop.signum, bar, writer)
        bar.close()
        results = self.final_scores(writer, progress.tokens_per_second) if self.world.is_main else {}
        if writer is not None:
            writer.close()
        return results

    def _stop_on_signal(self, signum: int | None, bar: tqdm, writer: SummaryWriter | None) -> None:
        bar.close()
        if self.world.is_main:
            self._save()
            writer.close()
        raise Interrupted(f"stopped at step {self.step}: saved {self.checkpoints.last}; continue with "
                          "trainer.resume=true (and the same hydra.run.dir)", signum or 15)

    def final_scores(self, writer: SummaryWriter, tokens_per_s: float) -> dict:
        """best.pt's scores on the test sets, written with the run's figures to results.json."""
        best = load_checkpoint(self.checkpoints.best, self.device)
        self.model.load_state_dict(best["model"])
        results = {"best_step": best["step"], "best_weights": best["weights"], "steps": self.step,
                   "precision": self.precision, "processes": self.world.size, "decoding": self.validation.decoding(),
                   "train_target_tokens_per_s": round(tokens_per_s, 1), "dev": best["dev"]}
        results["test"] = self.validation.test_scores(self.data.tests, writer, best["step"])
        write_text(self.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
        log.info("done: %s (scores in %s)", self.checkpoints.best, self.run_dir / "results.json")
        return results
