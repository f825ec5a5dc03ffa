"""fairseq's training step as a contestant of scripts/bench.py's race (`--fairseq-python`): run by an interpreter
where fairseq imports, never by ours (fairseq's last release does not import on Python 3.11: docs/benchmark.md).

It builds the bench's model with fairseq's own code, from the options fairseq-train takes (a `transformer` with the
same dimensions, norms, embedding sharing and scaling, dropout only on embeddings and sublayer outputs), its
label-smoothed loss and its Adam (on a CPU, fairseq's own for-loop: its fused Adam is CUDA's), and times one pass
over the bench's batches as bench.py times ours: forward, loss, backward, optimizer step. In float32 only:
fairseq's `--bf16` implies a TPU (fairseq/options.py) and its `--fp16`/`--amp` are CUDA's. The batches are
bench.py's, with the padding id moved to fairseq's.

    PY scripts/bench_fairseq.py --serve "train:fairseq fp32" --workdir DIR   # started by bench.py, not by hand
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from bench_harness import serve

FAIRSEQ_PAD = 1  # fairseq's Dictionary: <s> 0, <pad> 1, </s> 2, <unk> 3, then the file's symbols


def fairseq_parts(spec: dict, workdir: Path):
    """fairseq's task, model, criterion and optimizer for `spec` (bench.py's fairseq.json), built as fairseq-train
    builds them."""
    from fairseq import options, tasks
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf
    from fairseq.trainer import Trainer as FairseqTrainer

    data = workdir / "fairseq-dict"
    data.mkdir(exist_ok=True)
    symbols = "".join(f"piece{i} 1\n" for i in range(spec["vocab_size"] - 4))  # the 4 specials come first
    for lang in ("src", "tgt"):
        (data / f"dict.{lang}.txt").write_text(symbols)
    cfg = spec["model"]
    argv = [str(data), "--task", "translation", "--source-lang", "src", "--target-lang", "tgt", "--cpu",
            "--arch", "transformer",
            "--encoder-embed-dim", str(cfg["d_model"]), "--decoder-embed-dim", str(cfg["d_model"]),
            "--encoder-ffn-embed-dim", str(cfg["ffn_dim"]), "--decoder-ffn-embed-dim", str(cfg["ffn_dim"]),
            "--encoder-attention-heads", str(cfg["n_heads"]), "--decoder-attention-heads", str(cfg["n_heads"]),
            "--encoder-layers", str(cfg["encoder_layers"]), "--decoder-layers", str(cfg["decoder_layers"]),
            "--dropout", str(cfg["dropout"]), "--attention-dropout", str(cfg["attention_dropout"]),
            "--activation-dropout", str(cfg["activation_dropout"]), "--activation-fn", cfg["activation"],
            "--max-source-positions", str(cfg["max_positions"]), "--max-target-positions", str(cfg["max_positions"]),
            "--criterion", "label_smoothed_cross_entropy", "--label-smoothing", str(spec["label_smoothing"]),
            "--optimizer", "adam", "--adam-betas", "(0.9, 0.98)", "--adam-eps", "1e-9", "--lr", str(spec["lr"]),
            "--seed", "1"]
    if cfg["pre_norm"]:
        argv += ["--encoder-normalize-before", "--decoder-normalize-before"]
    if cfg["tie_embeddings"]:
        argv += ["--share-all-embeddings"]
    if not cfg["scale_embeddings"]:
        argv += ["--no-scale-embedding"]
    args = options.parse_args_and_arch(options.get_training_parser(), input_args=argv)
    fairseq_cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(fairseq_cfg.task)
    model, criterion = task.build_model(fairseq_cfg.model), task.build_criterion(fairseq_cfg.criterion)
    trainer = FairseqTrainer(fairseq_cfg, task, model, criterion)  # builds the optimizer as fairseq-train's
    return task, trainer


def fairseq_sample(batch: dict) -> dict:
    """A batch of bench.py's (src, tgt_in, tgt_out) as fairseq's translation samples are laid out."""
    def moved(ids: torch.Tensor) -> torch.Tensor:  # swap our padding id and fairseq's (a permutation of ids)
        ours = ids.eq(batch["pad_id"])
        return torch.where(ours, FAIRSEQ_PAD, torch.where(ids.eq(FAIRSEQ_PAD), batch["pad_id"], ids))

    src, tgt_in, tgt_out = (moved(batch[k]) for k in ("src", "tgt_in", "tgt_out"))
    ntokens = int(tgt_out.ne(FAIRSEQ_PAD).sum())
    return {"id": torch.arange(src.size(0)), "nsentences": src.size(0), "ntokens": ntokens, "target": tgt_out,
            "net_input": {"src_tokens": src, "src_lengths": src.ne(FAIRSEQ_PAD).sum(1),
                          "prev_output_tokens": tgt_in}}


class FairseqStep:
    """fairseq's step on bench.py's batches: task.train_step (forward, loss, backward) and its optimizer's step."""

    def __init__(self, spec: dict, workdir: Path):
        torch.manual_seed(1)
        self.task, trainer = fairseq_parts(spec, workdir)
        self.model, self.criterion, self.optimizer = trainer.model, trainer.criterion, trainer.optimizer
        self.samples = [fairseq_sample(b) for b in torch.load(workdir / "batches.pt")]
        self.updates = 0

    def run(self) -> int:
        tokens = 0
        for sample in self.samples:
            loss, sample_size, _ = self.task.train_step(sample, self.model, self.criterion, self.optimizer,
                                                        self.updates)
            self.optimizer.multiply_grads(1.0 / sample_size)  # as fairseq's Trainer: the loss is a sum
            self.optimizer.step()
            self.optimizer.zero_grad()
            self.updates += 1
            tokens += sample["ntokens"]
        return tokens


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", required=True, help="the contestant's key (train:fairseq fp32)")
    p.add_argument("--workdir", required=True, help="bench.py's working folder (fairseq.json, batches.pt)")
    args = p.parse_args()
    workdir = Path(args.workdir)
    spec = json.loads((workdir / "fairseq.json").read_text())
    serve(FairseqStep(spec, workdir).run, torch.device("cpu"))


if __name__ == "__main__":
    main()
