"""The training loop: batches -> label-smoothed loss -> optimizer and schedule; every eval_every steps the dev set
is translated and scored, checkpoints and heatmaps written; at the end the best checkpoint is scored on the tests.

Under torchrun each process trains on its share of the batches (DistributedDataParallel averages gradients);
rank 0 alone evaluates and writes the run directory, and tells the others whether to stop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.nn.parallel import DistributedDataParallel
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mt import data as corpus_data
from mt import distributed
from mt.alignment_training import LinkSource, links_from_model, trained_head
from mt.allocator import allocator_report, release_free_memory
from mt.averaging import ExponentialMovingAverage
from mt.checkpoint import load_checkpoint, model_payload, save_checkpoint
from mt.config import OptimConfig, Optimizer, TrainConfig
from mt.evaluate import Scores, score
from mt.files import InputError, remove_partial_writes, write_atomically
from mt.hardware import autocast_for, peak_memory_mb, resident_memory_mb, select_device, select_precision
from mt.heatmap import attention_figure
from mt.interrupt import Interrupted, StopRequests
from mt.loss import alignment_loss, label_smoothed_cross_entropy
from mt.model import Transformer
from mt.search import greedy_search, score_outputs
from mt.tokenizer import PAD_ID
from mt.training_data import TrainingData
from mt.translator import LoadedModel, SearchSettings, Translator

log = logging.getLogger(__name__)

WINDOW_SUMS = ("loss_sum", "nll_sum", "alignment_sum", "tokens")  # summed over the steps between two log lines


# ---------------------------------------------------------------- optimization

def build_optimizer(model: torch.nn.Module, cfg: OptimConfig):
    kind = {Optimizer.adam: torch.optim.Adam, Optimizer.adamw: torch.optim.AdamW}[cfg.name]
    optimizer = kind(model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)
    warmup = max(1, cfg.warmup_steps)
    # Inverse square root: linear warm-up to lr, then lr * sqrt(warmup / step).
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: min((step + 1) / warmup, math.sqrt(warmup / (step + 1))))
    return optimizer, schedule


# ---------------------------------------------------------------- the run

class Trainer:
    def __init__(self, cfg: TrainConfig, run_dir: Path):
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.world, self.device = distributed.join(select_device(cfg.trainer.device))
        if not self.world.is_main:
            logging.getLogger("mt").setLevel(logging.WARNING)  # one log: rank 0's
        self.precision = select_precision(cfg.trainer.precision, self.device)
        self.autocast = autocast_for(self.precision, self.device)
        torch.manual_seed(cfg.trainer.seed)
        if self.world.is_main:
            remove_partial_writes(self.ckpt_dir)  # left by a process killed while saving

        aligning = cfg.align.weight > 0
        self.data = TrainingData(cfg, self.world, self.run_dir, aligning)
        self.tokenizer = self.data.tokenizer
        own_links = cfg.align.links == LinkSource.self
        self.alignment_head = (trained_head(cfg.align, cfg.model.decoder_layers, cfg.model.n_heads)
                               if aligning and (own_links or self.data.has_links) else None)

        self.model_cfg = dataclasses.replace(cfg.model, vocab_size=self.tokenizer.vocab_size, pad_id=PAD_ID)
        self.model = Transformer(self.model_cfg).to(self.device)
        self.replicas = self.model  # what the training steps run: DDP's wrapper under torchrun (see train)
        self.optimizer, self.schedule = build_optimizer(self.model, cfg.optim)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        t = cfg.trainer
        self.ema = ExponentialMovingAverage(self.model, t.ema_decay) if t.ema_decay > 0 else None
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_bleu, self.stale_evals = -1.0, 0
        log.info("model: %s, %.1fM parameters; device %s, precision %s%s; peak memory so far %.0f MB", self.model_cfg,
                 sum(p.numel() for p in self.model.parameters()) / 1e6, self.device, self.precision,
                 f", {self.world.size} processes" if self.world.active else "", peak_memory_mb())
        if self.device.type == "cpu":
            log.info(allocator_report())

    # ------------------------------------------------------------ checkpoints

    def _checkpoint_content(self) -> dict:
        return {
            **self._model_payload(),
            "config": OmegaConf.to_container(OmegaConf.structured(self.cfg), enum_to_str=True),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "best_bleu": self.best_bleu, "stale_evals": self.stale_evals,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
        }

    def _model_payload(self) -> dict:
        """What translating needs; the alignment head is named once it has trained."""
        return model_payload(self.model, self.tokenizer, self.alignment_head if self._aligning() else None)

    def _save(self, best: tuple[str, Scores] | None = None, dev: Scores | None = None) -> None:
        """last.pt; after an evaluation (`dev`: the raw weights' scores) also checkpoints/step_N.pt, and best.pt
        when `best` (which weights, their scores) is a new best."""
        content = self._checkpoint_content()
        # best.pt before last.pt: a crash between the two leaves last.pt older, and resuming from it redoes
        # this evaluation and writes best.pt again. The other order could leave a best.pt that resume never fixes.
        if best is not None:
            weights, scores = best
            model = content["model"]
            if weights == "ema":
                with self.ema.swapped_in(self.model):
                    model = {name: tensor.clone() for name, tensor in self.model.state_dict().items()}
            save_checkpoint(self.ckpt_dir / "best.pt", {**content, "model": model, "weights": weights,
                                                        "dev": dataclasses.asdict(scores)})
        if dev is not None and self.cfg.trainer.keep_checkpoints > 0:
            save_checkpoint(self.ckpt_dir / f"step_{self.step}.pt",
                            {**self._model_payload(), "step": self.step, "dev": dataclasses.asdict(dev)})
            kept = sorted(self.ckpt_dir.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
            for old in kept[:-self.cfg.trainer.keep_checkpoints]:
                old.unlink()
        save_checkpoint(self.ckpt_dir / "last.pt", content)

    def resume(self) -> None:
        path = self.ckpt_dir / "last.pt"
        # Rank 0 reads the checkpoint and sends it: other nodes need no shared file system.
        state = distributed.from_main(self.world, load_checkpoint(path) if self.world.is_main and path.exists()
                                      else None)
        if state is None:
            log.info("trainer.resume: no %s yet, starting from scratch", path)
            return
        if state["model_config"] != dataclasses.asdict(self.model_cfg):
            raise InputError(f"{path}: its model settings differ from this run's ({state['model_config']}); "
                             "resume with the same model.* and data.tokenizer.* settings")
        if state["spm_model"] != self.tokenizer.model_bytes:
            raise InputError(f"{path}: its SentencePiece vocabulary differs from this run's; resume with the same "
                             "data and data.tokenizer.* settings")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.scaler.load_state_dict(state["scaler"])
        if self.ema is not None and state.get("ema"):
            self.ema.load_state_dict(state["ema"])
        elif self.ema is not None:
            log.info("%s holds no weight average: the average starts from the resumed weights", path)
            self.ema = ExponentialMovingAverage(self.model, self.cfg.trainer.ema_decay)
        self.step, self.epoch, self.batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        self.best_bleu, self.stale_evals = state["best_bleu"], state["stale_evals"]
        torch.set_rng_state(state["rng"])
        if state["cuda_rng"]:
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.step, self.epoch, self.batch_in_epoch)

    # ------------------------------------------------------------ steps

    def _micro_batches(self):
        """Training batches in order, forever, from the current (epoch, batch_in_epoch)."""
        while True:
            order = self.data.batches.epoch(self.epoch)
            while self.batch_in_epoch < len(order):
                indices = order[self.batch_in_epoch]
                self.batch_in_epoch += 1
                yield self.data.batch(indices, self.epoch, self.batch_in_epoch - 1)
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def _aligning(self) -> bool:
        """Whether the alignment head trains now (its links are there)."""
        return self.alignment_head is not None and self.data.has_links

    def _read_own_links(self) -> None:
        """align.links=self: the model's own symmetrized shift-att links of the training pairs, from now on."""
        lines = self.data.saved_links()
        if lines is None:
            log.info("step %d: reading the model's own links of %d training pairs", self.step, len(self.data.train))
            self.model.eval()
            lines = links_from_model(LoadedModel(self.model, self.tokenizer, None), list(self.data.train["src"]),
                                     list(self.data.train["tgt"]), self.cfg.align.reverse_checkpoint,
                                     self.cfg.trainer.eval_batch_tokens, self.device, self.precision)
            self.model.train()
            self.data.save_links(lines)
        self.data.add_links(lines)

    def train_step(self, batches: list[corpus_data.Batch]) -> dict:
        """One optimizer step over `batches` (on every rank): the loss is normalized by all their target tokens
        together, so N processes equal one process accumulating N times as many batches."""
        tokens = sum(b.target_tokens for b in batches)
        all_tokens = distributed.sum_over_ranks(self.world, [tokens], self.device)[0]
        total_loss = total_nll = total_alignment = 0.0
        for i, batch in enumerate(batches):
            batch = batch.to(self.device)
            # Gradients are exchanged once, with the last batch's backward.
            last = i == len(batches) - 1
            with contextlib.nullcontext() if last or not self.world.active else self.replicas.no_sync():
                head = self.alignment_head if batch.alignment is not None else None
                with self.autocast():
                    out = self.replicas(batch.src, batch.tgt_in, **(head.pass_arguments() if head else {}))
                loss, nll = label_smoothed_cross_entropy(out.logits, batch.tgt_out, self.cfg.trainer.label_smoothing,
                                                         PAD_ID)
                if head is not None:
                    aligned = alignment_loss(head.weights(out), batch.alignment)
                    loss = loss + self.cfg.align.weight * aligned
                    total_alignment = total_alignment + aligned.detach()
                # DDP divides the summed gradients by the world size; multiplying by it here keeps the step
                # the gradient of (all ranks' loss) / (all ranks' tokens). Both are powers of two in tests: exact.
                self.scaler.scale(loss / all_tokens * self.world.size).backward()
            total_loss, total_nll = total_loss + loss.detach(), total_nll + nll.detach()
        self.scaler.unscale_(self.optimizer)
        clip = self.cfg.trainer.clip_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip if clip > 0 else float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.schedule.get_last_lr()[0]
        self.schedule.step()
        self.step += 1
        if self.ema is not None:
            self.ema.update(self.model, self.step)
        return {"loss_sum": float(total_loss), "nll_sum": float(total_nll), "alignment_sum": float(total_alignment),
                "grad_norm": float(grad_norm), "lr": lr, "tokens": tokens}

    # ------------------------------------------------------------ evaluation

    def evaluate(self, split) -> Scores:
        """Greedy translations of a split's sources (exactly as translate.py beam_size=1 gives them), scored."""
        t = self.cfg.trainer
        settings = SearchSettings(beam_size=1, max_len_a=t.max_len_a, max_len_b=t.max_len_b,
                                  batch_tokens=t.eval_batch_tokens)
        was_training = self.model.training
        self.model.eval()
        hyps = Translator(self.model, self.tokenizer, settings, self.device, self.precision).best(list(split["src"]))
        self.model.train(was_training)
        return score(hyps, list(split["tgt"]))

    @torch.no_grad()
    def draw_heatmaps(self, writer: SummaryWriter) -> None:
        count = min(self.cfg.trainer.heatmap_sentences, len(self.data.dev))
        if count == 0:
            return
        self.model.eval()
        batch = corpus_data.collate(self.data.dev, list(range(count)), self.data.max_len).to(self.device)
        outputs = greedy_search(self.model, batch.src, self.cfg.trainer.max_len_a, self.cfg.trainer.max_len_b).tokens
        attention = score_outputs(self.model, batch.src, outputs, need_attention=True).attention
        for i in range(count):
            src_ids = [t for t in batch.src[i].tolist() if t != PAD_ID]
            layers = [layer.mean(dim=0) for layer in attention[i]]  # heads averaged
            fig = attention_figure(layers, self.tokenizer.pieces(src_ids), self.tokenizer.pieces(outputs[i]) + ["</s>"],
                                   title=f"dev sentence {i}, step {self.step}")
            writer.add_figure(f"attention/dev_{i}", fig, self.step)
        self.model.train()

    def _eval_and_save(self, writer: SummaryWriter | None) -> bool:
        """Evaluate on dev and write checkpoints (rank 0); True on every rank if training should stop early."""
        stop = self._eval_and_save_main(writer) if self.world.is_main else None
        return distributed.from_main(self.world, stop)

    def _eval_and_save_main(self, writer: SummaryWriter) -> bool:
        dev = self.evaluate(self.data.dev)
        log.info("step %d dev %s", self.step, dev)
        candidates = [("raw", dev)]
        if self.ema is not None:
            with self.ema.swapped_in(self.model):
                candidates.append(("ema", self.evaluate(self.data.dev)))
            log.info("step %d dev, weight average: %s", self.step, candidates[-1][1])
        for weights, scores in candidates:
            suffix = "_ema" if weights == "ema" else ""
            writer.add_scalar(f"dev/bleu{suffix}", scores.bleu, self.step)
            writer.add_scalar(f"dev/chrf{suffix}", scores.chrf, self.step)
        self.draw_heatmaps(writer)
        best = max(candidates, key=lambda candidate: candidate[1].bleu)
        improved = best[1].bleu > self.best_bleu
        self.best_bleu, self.stale_evals = (best[1].bleu, 0) if improved else (self.best_bleu, self.stale_evals + 1)
        self._save(best if improved else None, dev)
        writer.flush()
        patience = self.cfg.trainer.patience
        return patience > 0 and self.stale_evals >= patience

    # ------------------------------------------------------------ loop

    def _steps_per_epoch(self) -> int:
        return max(1, len(self.data.batches.epoch(0)) // self.cfg.trainer.accum_steps)

    def _total_steps(self) -> int:
        t = self.cfg.trainer
        limits = [t.max_steps] if t.max_steps else []
        if t.max_epochs:
            limits.append(t.max_epochs * self._steps_per_epoch())
        if not limits:
            raise InputError("set trainer.max_steps or trainer.max_epochs (or both): training needs an end")
        return min(limits)

    @staticmethod
    def _new_window() -> dict:
        return {**dict.fromkeys(WINDOW_SUMS, 0.0), "start": time.perf_counter()}

    def _log_window(self, window: dict, stats: dict, writer: SummaryWriter | None, bar: tqdm) -> tuple[float, float]:
        """Log the steps since the last log (all ranks' sums); returns their target tokens and seconds."""
        seconds = time.perf_counter() - window["start"]
        sums = dict(zip(WINDOW_SUMS, distributed.sum_over_ranks(self.world, [window[k] for k in WINDOW_SUMS],
                                                                 self.device)))
        tokens = sums["tokens"]
        loss, nll, speed = sums["loss_sum"] / tokens, sums["nll_sum"] / tokens, tokens / seconds
        if writer is not None:
            scalars = {"loss": loss, "ppl": math.exp(min(nll, 50)), "lr": stats["lr"], "grad_norm": stats["grad_norm"],
                       "tokens_per_s": speed, "memory_mb": resident_memory_mb()}
            if self._aligning():
                scalars["alignment_loss"] = sums["alignment_sum"] / tokens
            for name, value in scalars.items():
                writer.add_scalar(f"train/{name}", value, self.step)
        bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{speed:,.0f}", epoch=self.epoch)
        return tokens, seconds

    def _needs_own_links(self) -> bool:
        a = self.cfg.align
        return (self.alignment_head is not None and a.links == LinkSource.self and not self._aligning()
                and self.step >= a.start_step)

    def train(self) -> dict:
        """Train to the end or an early stop; results on rank 0, {} elsewhere. A signal saves, raises Interrupted."""
        t = self.cfg.trainer
        total = self._total_steps()
        if self.world.active:
            # broadcast_buffers=False: the only buffer is the fixed position table.
            self.replicas = DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None, broadcast_buffers=False)
        writer = SummaryWriter(str(self.run_dir / "tb")) if self.world.is_main else None
        batches = self._micro_batches()
        bar = tqdm(total=total, initial=self.step, disable=not (t.progress and self.world.is_main), unit="step",
                   dynamic_ncols=True)
        window = self._new_window()
        trained_tokens, trained_seconds = 0, 0.0
        stop_early = False
        self.model.train()
        with StopRequests() as stop:
            while self.step < total and not stop_early:
                if self._needs_own_links():
                    self._read_own_links()
                stats = self.train_step([next(batches) for _ in range(t.accum_steps)])
                for key in WINDOW_SUMS:
                    window[key] += stats[key]
                bar.update(1)
                if self.step % t.log_every == 0 or self.step == total:
                    tokens, seconds = self._log_window(window, stats, writer, bar)
                    trained_tokens, trained_seconds = trained_tokens + tokens, trained_seconds + seconds
                    release_free_memory()
                    window = self._new_window()
                if self.step % t.eval_every == 0 or self.step == total:
                    bar.clear()
                    stop_early = self._eval_and_save(writer)
                    if stop_early:
                        log.info("no dev BLEU gain in %d evaluations: stopping early at step %d", t.patience, self.step)
                    window["start"] = time.perf_counter()  # evaluation time is not training speed
                if distributed.any_rank(self.world, stop.signum is not None, self.device):
                    self._stop_on_signal(stop.signum, bar, writer)
        bar.close()
        results = self.final_scores(writer, trained_tokens / max(trained_seconds, 1e-9)) if self.world.is_main else {}
        if writer is not None:
            writer.close()
        return results

    def _stop_on_signal(self, signum: int | None, bar: tqdm, writer: SummaryWriter | None) -> None:
        bar.close()
        if self.world.is_main:
            self._save()
            writer.close()
        raise Interrupted(f"stopped at step {self.step}: saved {self.ckpt_dir / 'last.pt'}; continue with "
                          "trainer.resume=true (and the same hydra.run.dir)", signum or 15)

    def final_scores(self, writer: SummaryWriter, tokens_per_s: float) -> dict:
        best = load_checkpoint(self.ckpt_dir / "best.pt", self.device)
        self.model.load_state_dict(best["model"])
        results = {
            "best_step": best["step"], "best_weights": best["weights"], "steps": self.step,
            "precision": self.precision,
            "processes": self.world.size,
            "decoding": {"beam_size": 1, "max_len_a": self.cfg.trainer.max_len_a,
                         "max_len_b": self.cfg.trainer.max_len_b, "batch_tokens": self.cfg.trainer.eval_batch_tokens},
            "train_target_tokens_per_s": round(tokens_per_s, 1),
            "dev": best["dev"], "test": {},
        }
        for name, split in self.data.tests.items():
            scores = self.evaluate(split)
            log.info("test %s (best checkpoint, step %d): %s", name, best["step"], scores)
            writer.add_scalar(f"test/{name}/bleu", scores.bleu, best["step"])
            results["test"][name] = dataclasses.asdict(scores)
        write_text(self.run_dir / "results.json", json.dumps(results, indent=2) + "\n")
        log.info("done: %s/checkpoints/best.pt (scores in %s/results.json)", self.run_dir, self.run_dir)
        return results


def write_text(path: Path, text: str) -> None:
    write_atomically(path, lambda f: f.write(text.encode()))


def run(cfg: TrainConfig, run_dir: str | Path) -> dict:
    """Train as configured, writing everything into run_dir; returns what results.json holds ({} off rank 0)."""
    run_dir = Path(run_dir)
    trainer = None
    try:
        trainer = Trainer(cfg, run_dir)
        if trainer.world.is_main:
            write_text(run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.structured(cfg)))
            log.info("run directory: %s", run_dir)
        if cfg.trainer.resume:
            trainer.resume()
        results = trainer.train()
        distributed.wait_for_all(trainer.world)
        return results
    finally:
        if trainer is not None:
            distributed.leave(trainer.world)
