"""The training loop: batches -> label-smoothed loss -> optimizer and schedule; every eval_every steps the dev set
is translated and scored, checkpoints and heatmaps written; at the end the best checkpoint is scored on the tests."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter
from tqdm import tqdm

from mt import data as corpus_data
from mt.checkpoint import load_checkpoint, save_checkpoint
from mt.config import OptimConfig, TrainConfig
from mt.evaluate import Scores, score
from mt.files import InputError
from mt.hardware import autocast_for, select_device, select_precision
from mt.heatmap import attention_figure
from mt.loss import label_smoothed_cross_entropy
from mt.model import Transformer
from mt.search import greedy_search, score_outputs
from mt.tokenizer import PAD_ID, train_or_load
from mt.translate import TranslateConfig, Translator

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- optimization

def build_optimizer(model: torch.nn.Module, cfg: OptimConfig):
    kind = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}.get(cfg.name)
    if kind is None:
        raise InputError(f"optim.name={cfg.name}: choose adam or adamw")
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
        self.device = select_device(cfg.trainer.device)
        self.precision = select_precision(cfg.trainer.precision, self.device)
        self.autocast = autocast_for(self.precision, self.device)
        torch.manual_seed(cfg.trainer.seed)

        corpus = corpus_data.load_corpus(cfg.data)
        self.tokenizer = train_or_load(
            (text for row in corpus["train"] for text in (row["src"], row["tgt"])),
            corpus_data.corpus_fingerprint(corpus["train"]), cfg.data.tokenizer, Path(cfg.data.cache_dir) / "spm")
        self.tokenizer.save(self.run_dir / "spm.model")
        encoded = {name: corpus_data.encode(split, self.tokenizer, keep_text=name != "train")
                   for name, split in corpus.items()}
        # A sequence may not outgrow the model's positions: EOS (source) and BOS (target) take one each.
        self.max_len = min(cfg.data.max_len, cfg.model.max_positions)
        self.train_split = corpus_data.filter_pairs(encoded.pop("train"), self.max_len, cfg.data.max_len_ratio)
        self.dev_split = encoded.pop("dev")
        self.test_splits = encoded
        self.batches = corpus_data.TokenBatches.for_split(
            self.train_split, cfg.data.batch_tokens, shuffle=True, seed=cfg.trainer.seed)

        self.model_cfg = dataclasses.replace(cfg.model, vocab_size=self.tokenizer.vocab_size, pad_id=PAD_ID)
        self.model = Transformer(self.model_cfg).to(self.device)
        self.optimizer, self.schedule = build_optimizer(self.model, cfg.optim)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        self.best_bleu, self.stale_evals = -1.0, 0
        log.info("model: %s, %.1fM parameters; device %s, precision %s", self.model_cfg,
                 sum(p.numel() for p in self.model.parameters()) / 1e6, self.device, self.precision)

    # ------------------------------------------------------------ checkpoints

    def _checkpoint_content(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "model_config": dataclasses.asdict(self.model_cfg),
            "config": OmegaConf.to_container(OmegaConf.structured(self.cfg)),
            "spm_model": self.tokenizer.model_bytes,
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": self.step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
            "best_bleu": self.best_bleu, "stale_evals": self.stale_evals,
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if self.device.type == "cuda" else [],
        }

    def resume(self) -> None:
        path = self.ckpt_dir / "last.pt"
        if not path.exists():
            log.info("trainer.resume: no %s yet, starting from scratch", path)
            return
        state = load_checkpoint(path)
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
            order = self.batches.epoch(self.epoch)
            while self.batch_in_epoch < len(order):
                indices = order[self.batch_in_epoch]
                self.batch_in_epoch += 1
                yield corpus_data.collate(self.train_split, indices)
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def train_step(self, batches: list[corpus_data.Batch]) -> dict:
        """One optimizer step over `batches`; the loss is normalized by all their target tokens together."""
        tokens = sum(b.target_tokens for b in batches)
        total_loss = total_nll = 0.0
        for batch in batches:
            batch = batch.to(self.device)
            with self.autocast():
                logits = self.model(batch.src, batch.tgt_in).logits
            loss, nll = label_smoothed_cross_entropy(logits, batch.tgt_out, self.cfg.trainer.label_smoothing, PAD_ID)
            self.scaler.scale(loss / tokens).backward()
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
        return {"loss": total_loss / tokens, "nll": total_nll / tokens, "grad_norm": grad_norm, "lr": lr,
                "tokens": tokens}

    # ------------------------------------------------------------ evaluation

    def evaluate(self, split) -> Scores:
        """Greedy translations of a split's sources (exactly as translate.py beam_size=1 gives them), scored."""
        t = self.cfg.trainer
        settings = TranslateConfig(beam_size=1, max_len_a=t.max_len_a, max_len_b=t.max_len_b,
                                   batch_tokens=t.eval_batch_tokens, precision=self.precision)
        was_training = self.model.training
        self.model.eval()
        hyps = Translator(self.model, self.tokenizer, settings, self.device).best(list(split["src"]))
        self.model.train(was_training)
        return score(hyps, list(split["tgt"]))

    @torch.no_grad()
    def draw_heatmaps(self, writer: SummaryWriter) -> None:
        count = min(self.cfg.trainer.heatmap_sentences, len(self.dev_split))
        if count == 0:
            return
        self.model.eval()
        batch = corpus_data.collate(self.dev_split, list(range(count)), self.max_len).to(self.device)
        outputs = greedy_search(self.model, batch.src, self.cfg.trainer.max_len_a, self.cfg.trainer.max_len_b).tokens
        attention = score_outputs(self.model, batch.src, outputs, need_attention=True).attention
        for i in range(count):
            src_ids = [t for t in batch.src[i].tolist() if t != PAD_ID]
            layers = [layer.mean(dim=0) for layer in attention[i]]  # heads averaged
            fig = attention_figure(layers, self.tokenizer.pieces(src_ids), self.tokenizer.pieces(outputs[i]) + ["</s>"],
                                   title=f"dev sentence {i}, step {self.step}")
            writer.add_figure(f"attention/dev_{i}", fig, self.step)
        self.model.train()

    def _eval_and_save(self, writer: SummaryWriter) -> bool:
        """Evaluate on dev, write checkpoints; True if training should stop early."""
        dev = self.evaluate(self.dev_split)
        log.info("step %d dev %s", self.step, dev)
        writer.add_scalar("dev/bleu", dev.bleu, self.step)
        writer.add_scalar("dev/chrf", dev.chrf, self.step)
        self.draw_heatmaps(writer)
        improved = dev.bleu > self.best_bleu
        self.best_bleu, self.stale_evals = (dev.bleu, 0) if improved else (self.best_bleu, self.stale_evals + 1)
        content = self._checkpoint_content()
        if improved:
            save_checkpoint(self.ckpt_dir / "best.pt", {**content, "dev": dataclasses.asdict(dev)})
        save_checkpoint(self.ckpt_dir / "last.pt", content)
        writer.flush()
        patience = self.cfg.trainer.patience
        return patience > 0 and self.stale_evals >= patience

    # ------------------------------------------------------------ loop

    def _steps_per_epoch(self) -> int:
        return max(1, len(self.batches.epoch(0)) // self.cfg.trainer.accum_steps)

    def _total_steps(self) -> int:
        t = self.cfg.trainer
        limits = [t.max_steps] if t.max_steps else []
        if t.max_epochs:
            limits.append(t.max_epochs * self._steps_per_epoch())
        if not limits:
            raise InputError("set trainer.max_steps or trainer.max_epochs (or both): training needs an end")
        return min(limits)

    def train(self) -> dict:
        t = self.cfg.trainer
        total = self._total_steps()
        writer = SummaryWriter(str(self.run_dir / "tb"))
        batches = self._micro_batches()
        bar = tqdm(total=total, initial=self.step, disable=not t.progress, unit="step", dynamic_ncols=True)
        window = {"loss": 0.0, "nll": 0.0, "tokens": 0, "start": time.perf_counter()}
        trained_tokens, trained_seconds = 0, 0.0
        stop_early = False
        self.model.train()
        while self.step < total and not stop_early:
            stats = self.train_step([next(batches) for _ in range(t.accum_steps)])
            for key in ("loss", "nll"):
                window[key] += float(stats[key]) * stats["tokens"]
            window["tokens"] += stats["tokens"]
            bar.update(1)
            if self.step % t.log_every == 0 or self.step == total:
                seconds = time.perf_counter() - window["start"]
                loss, nll = window["loss"] / window["tokens"], window["nll"] / window["tokens"]
                speed = window["tokens"] / seconds
                for name, value in (("loss", loss), ("ppl", math.exp(min(nll, 50))), ("lr", stats["lr"]),
                                    ("grad_norm", float(stats["grad_norm"])), ("tokens_per_s", speed)):
                    writer.add_scalar(f"train/{name}", value, self.step)
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{speed:,.0f}", epoch=self.epoch)
                trained_tokens, trained_seconds = trained_tokens + window["tokens"], trained_seconds + seconds
                window = {"loss": 0.0, "nll": 0.0, "tokens": 0, "start": time.perf_counter()}
            if self.step % t.eval_every == 0 or self.step == total:
                bar.clear()
                stop_early = self._eval_and_save(writer)
                if stop_early:
                    log.info("no dev BLEU gain in %d evaluations: stopping early at step %d", t.patience, self.step)
                window["start"] = time.perf_counter()  # evaluation time is not training speed
        bar.close()
        results = self.final_scores(writer, trained_tokens / max(trained_seconds, 1e-9))
        writer.close()
        return results

    def final_scores(self, writer: SummaryWriter, tokens_per_s: float) -> dict:
        best = load_checkpoint(self.ckpt_dir / "best.pt", self.device)
        self.model.load_state_dict(best["model"])
        results = {
            "best_step": best["step"], "steps": self.step, "precision": self.precision,
            "decoding": {"beam_size": 1, "max_len_a": self.cfg.trainer.max_len_a,
                         "max_len_b": self.cfg.trainer.max_len_b, "batch_tokens": self.cfg.trainer.eval_batch_tokens},
            "train_target_tokens_per_s": round(tokens_per_s, 1),
            "dev": best["dev"], "test": {},
        }
        for name, split in self.test_splits.items():
            scores = self.evaluate(split)
            log.info("test %s (best checkpoint, step %d): %s", name, best["step"], scores)
            writer.add_scalar(f"test/{name}/bleu", scores.bleu, best["step"])
            results["test"][name] = dataclasses.asdict(scores)
        (self.run_dir / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        return results


def run(cfg: TrainConfig, run_dir: str | Path) -> dict:
    """Train as configured, writing everything into run_dir; returns what results.json holds."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(cfg)))
    trainer = Trainer(cfg, run_dir)
    if cfg.trainer.resume:
        trainer.resume()
    return trainer.train()
