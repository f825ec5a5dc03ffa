"""Speed and memory, side by side on identical batches of the shipped Multi30k data.

Training: target tokens/s of one step (forward, loss, backward, Adam) of our Transformer against the same model
built from torch.nn.Transformer, both in float32, and of ours in bf16 autocast where the hardware has bf16; with
--fairseq-python, against fairseq's step on the same model and batches too (scripts/bench_fairseq.py).
Decoding: beam-5 sentences/s of our beam search with the key/value cache, without it, and of CTranslate2 in
float32 running an exported copy of the same weights (when ctranslate2 and mt/ctranslate2_export.py are there).
Each contestant runs in a process of its own, set up once; repetitions are interleaved (A, B, C, A, B, C, ...)
after a warm-up, one process working at a time, and medians are reported. Separate processes keep them from
slowing each other: with a CTranslate2 translator alive in the same process, our decoding ran 25-30% slower, and
after the no-cache search had run, 10-20% slower. The peak memory of each is its process's (on CPU its peak RSS;
on CUDA torch's peak allocation).

    python scripts/bench.py [--quick] [--device auto|cpu|cuda] [--model tiny|small|base] [--checkpoint CKPT]
                            [--fairseq-python PYTHON]

Decoding needs a trained model: a random one may end every sentence at once or run each to the length limit.
With --checkpoint the bench decodes (and trains, and tokenizes) with that model's dimensions and vocabulary;
without it, it trains --model from scratch on the bench batches for --train-steps steps (few: its translations
are poor, and their lengths, which decoding speed depends on, are printed beside the speeds).
Prints a table, then, last, one JSON line with the figures and their ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import itertools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from bench_harness import race, serve
from torch import nn

from mt.checkpoint import model_payload, save_checkpoint
from mt.data import Batch, TokenBatches, decoding_batches, make_batch
from mt.dropout import Dropout
from mt.evaluate import score
from mt.hardware import autocast_for, select_device, select_precision
from mt.loss import label_smoothed_cross_entropy
from mt.model import ModelConfig, SinusoidalPositions, Transformer
from mt.search import beam_search, max_output_lengths
from mt.tokenizer import PAD_ID, Tokenizer, TokenizerConfig, train_or_load
from mt.translator import SearchSettings, load_model

warnings.filterwarnings("ignore", message="enable_nested_tensor is True")  # nn.Transformer's, about norm_first

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data" / "multi30k"
SEARCH = SearchSettings()  # translate.py's defaults (beam size, length penalty, length limits)
LABEL_SMOOTHING, LR = 0.1, 5e-4
FAIRSEQ = "train:fairseq"  # its contestants' keys start so


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a smaller run, about a minute and a half on 2 CPU cores")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--model", default="small", help="mt/configs/model/NAME.yaml (ignored with --checkpoint)")
    p.add_argument("--checkpoint", help="a trained checkpoint: its model is benchmarked and decodes")
    p.add_argument("--reps", type=int, help="measured repetitions per contestant (default 5, --quick 3)")
    p.add_argument("--train-batches", type=int, help="training batches per repetition (default 8, --quick 2)")
    p.add_argument("--batch-tokens", type=int, help="padded tokens per training batch (default 4096, --quick 2048)")
    p.add_argument("--sentences", type=int, help="test_2016 sentences to decode (default 1000, --quick 100)")
    p.add_argument("--train-steps", type=int, help="without --checkpoint: steps to train the decoding model "
                   "(default 300, --quick none beyond the timed ones)")
    p.add_argument("--fairseq-python", metavar="PYTHON", help="an interpreter where fairseq imports: fairseq's "
                   "step on the same model and batches races ours (scripts/bench_fairseq.py; CPU only)")
    p.add_argument("--serve", help=argparse.SUPPRESS)  # internal: be one contestant, in a child process
    p.add_argument("--workdir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    defaults = dict(reps=(3, 5), train_batches=(2, 8), batch_tokens=(2048, 4096), sentences=(100, 1000),
                    train_steps=(0, 300))
    for name, (quick, full) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    return args


# ---------------------------------------------------------------- data and models

def read_gz(path: Path, count: int | None = None) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n") for line in itertools.islice(f, count)]


def bench_tokenizer(args) -> Tokenizer:
    """The checkpoint's, or a SentencePiece model trained on the first 10,000 training pairs (cached in .cache)."""
    if args.checkpoint:
        return load_model(args.checkpoint, torch.device("cpu")).tokenizer
    pairs, files = 10_000, [DATA / "train.de.gz", DATA / "train.en.gz"]
    fingerprint = f"bench|{pairs}|" + "|".join(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    texts = (line for f in files for line in read_gz(f, pairs))
    return train_or_load(texts, fingerprint, TokenizerConfig(vocab_size=8000), ROOT / ".cache" / "spm")


def model_config(args, tokenizer: Tokenizer) -> ModelConfig:
    if args.checkpoint:
        return load_model(args.checkpoint, torch.device("cpu")).model.cfg
    dims = yaml.safe_load((ROOT / "mt" / "configs" / "model" / f"{args.model}.yaml").read_text()) or {}
    return ModelConfig(vocab_size=tokenizer.vocab_size, **dims)


def training_batches(args, tokenizer: Tokenizer, cfg: ModelConfig) -> list[Batch]:
    """Length-bucketed batches as training makes them, `args.train_batches` of them spread from short to long."""
    src = tokenizer.encode(read_gz(DATA / "train.de.gz", 10_000))
    tgt = tokenizer.encode(read_gz(DATA / "train.en.gz", 10_000))
    limit = min(128, cfg.max_positions) - 1
    keep = [i for i in range(len(src)) if 0 < len(src[i]) <= limit and 0 < len(tgt[i]) <= limit]
    lengths = [np.array([len(side[i]) + 1 for i in keep]) for side in (src, tgt)]
    batches = TokenBatches(*lengths, args.batch_tokens, shuffle=False).epoch(0)
    chosen = [batches[int(i)] for i in np.linspace(0, len(batches) - 1, args.train_batches)]
    return [make_batch([src[keep[i]] for i in b], [tgt[keep[i]] for i in b]) for b in chosen]


def test_batches(args, tokenizer: Tokenizer) -> tuple[list[list[list[int]]], list[str]]:
    """test_2016 sources as translate.py batches them (by length, batch_tokens), and the references in that order."""
    ids = tokenizer.encode(read_gz(DATA / "test_2016_flickr.de.gz", args.sentences))
    batches = decoding_batches(ids, SEARCH.batch_tokens)
    order = [i for b in batches for i in b]
    references = read_gz(DATA / "test_2016_flickr.en.gz", args.sentences)
    return [[ids[i] for i in b] for b in batches], [references[i] for i in order]


class TorchReference(nn.Module):
    """Our model's twin from torch.nn.Transformer: same dimensions, embeddings (scaled by sqrt(d), plus the same
    sinusoidal positions), tied output and dropout rate; torch's own layers and attention (which also drop out
    inside the feed-forward, and end each stack in a norm, post-norm too)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.src_embed = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.tgt_embed = self.src_embed if cfg.tie_embeddings else nn.Embedding(
            cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad_id)
        self.positions = SinusoidalPositions(cfg.d_model, cfg.max_positions)
        self.dropout = nn.Dropout(cfg.dropout)
        self.transformer = nn.Transformer(
            cfg.d_model, cfg.n_heads, cfg.encoder_layers, cfg.decoder_layers, cfg.ffn_dim, cfg.dropout,
            batch_first=True, norm_first=cfg.pre_norm)
        self.output = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.output.weight = self.tgt_embed.weight

    def _embed(self, embedding: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
        return self.dropout(embedding(tokens) * self.cfg.d_model ** 0.5 + self.positions(tokens.size(1)))

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        src_pad = src.eq(self.cfg.pad_id)
        length = tgt_in.size(1)
        causal = torch.ones(length, length, dtype=torch.bool, device=src.device).triu(1)
        out = self.transformer(self._embed(self.src_embed, src), self._embed(self.tgt_embed, tgt_in),
                               tgt_mask=causal, src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad,
                               tgt_is_causal=True)
        return self.output(out)


# ---------------------------------------------------------------- contestants: each is set up, then run repeatedly

class Trainer:
    """One contestant of the training race: its own model (same seed for all) and Adam."""

    def __init__(self, name: str, cfg: ModelConfig, batches: list[Batch], device: torch.device, precision: str,
                 torch_dropout: bool = False, loop_adam: bool = False):
        torch.manual_seed(1)
        self.name, self.ours = name, not name.startswith("torch")
        self.model = (Transformer(cfg) if self.ours else TorchReference(cfg)).to(device).train()
        if torch_dropout:  # the previous round's step: torch's dropout in place of mt/dropout.py's
            for module in list(self.model.modules()):
                for child_name, child in module.named_children():
                    if isinstance(child, Dropout):
                        setattr(module, child_name, nn.Dropout(child.p))
        # fused, as mt/trainer.py's build_optimizer; loop_adam: torch's CPU default, the for-loop (the step before)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=LR, betas=(0.9, 0.98), eps=1e-9,
                                          fused=not loop_adam)
        self.batches = [b.to(device) for b in batches]
        self.autocast = autocast_for(precision, device)
        self.steps = 0

    def step(self, batch: Batch) -> None:
        tokens = batch.target_tokens
        with self.autocast():
            if self.ours:
                logits = self.model(batch.src, batch.tgt_in).logits
            else:
                logits = self.model(batch.src, batch.tgt_in)
        if self.ours:
            loss, _ = label_smoothed_cross_entropy(logits, batch.tgt_out, LABEL_SMOOTHING, PAD_ID)
        else:
            loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), batch.tgt_out.reshape(-1),
                                   ignore_index=PAD_ID, label_smoothing=LABEL_SMOOTHING, reduction="sum")
        (loss / tokens).backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.steps += 1

    def run(self) -> int:
        """One pass over the bench batches; returns the target tokens trained on."""
        for batch in self.batches:
            self.step(batch)
        return sum(b.target_tokens for b in self.batches)


class Decoder:
    """One contestant of the decoding race: ours (with or without the cache, in a precision) or CTranslate2."""

    def __init__(self, name: str, checkpoint: str, batches: list[list[list[int]]], device: torch.device,
                 precision: str = "fp32", use_cache: bool = True, ctranslate2_dir: str | None = None):
        self.name, self.use_cache, self.device = name, use_cache, device
        loaded = load_model(checkpoint, device)
        self.tokenizer, cfg = loaded.tokenizer, loaded.model.cfg
        longest = cfg.max_positions - 1  # translate.py's cut: the model's positions, EOS included
        batches = [[row[:longest] for row in b] for b in batches]
        self.sources = [make_batch(b, b).src.to(device) for b in batches]
        if ctranslate2_dir is None:
            self.model, self.translator = loaded.model, None
            self.autocast = autocast_for(precision, device)
        else:
            import ctranslate2

            self.translator = ctranslate2.Translator(
                ctranslate2_dir, device=device.type, compute_type="float32", inter_threads=1,
                intra_threads=torch.get_num_threads() if device.type == "cpu" else 0)
            self.pieces = [[self.tokenizer.pieces(row) for row in b] for b in batches]  # the export appends </s>
            # CTranslate2 takes one length limit per batch: the longest of ours for that batch.
            self.max_lengths = [
                int(max_output_lengths(s, SEARCH.max_len_a, SEARCH.max_len_b, cfg.max_positions, PAD_ID).max())
                for s in self.sources]

    def run(self) -> list[list[int]]:
        """Translate every batch; returns the best output's token ids per sentence."""
        outputs = []
        if self.translator is not None:
            for pieces, max_length in zip(self.pieces, self.max_lengths):
                # Its length penalty divides by length ** alpha (ours: GNMT's): a few outputs differ.
                results = self.translator.translate_batch(pieces, beam_size=SEARCH.beam_size,
                                                          length_penalty=SEARCH.length_penalty,
                                                          max_decoding_length=max_length)
                outputs += [[self.tokenizer.sp.piece_to_id(p) for p in r.hypotheses[0] if p != "</s>"]
                            for r in results]
            return outputs
        for src in self.sources:
            with self.autocast():
                nbests = beam_search(self.model, src, SEARCH.beam_size, 1, SEARCH.length_penalty, SEARCH.max_len_a,
                                     SEARCH.max_len_b, self.use_cache)
            outputs += [hyps[0].tokens for hyps in nbests]
        return outputs


def be_contestant(args) -> None:
    """In a child process (--serve KEY): set up one contestant, then time passes on request (bench_harness.py)."""
    kind, name = args.serve.split(":", 1)
    device = select_device(args.device)
    spec = json.loads(Path(args.workdir, "contestants.json").read_text())[args.serve]
    if kind == "train":
        tokenizer = bench_tokenizer(args)
        cfg = model_config(args, tokenizer)
        contestant = Trainer(name, cfg, training_batches(args, tokenizer, cfg), device, spec["precision"],
                             spec["torch_dropout"], spec["loop_adam"])
    else:
        tokenizer = load_model(spec["checkpoint"], torch.device("cpu")).tokenizer
        contestant = Decoder(name, spec["checkpoint"], test_batches(args, tokenizer)[0], device,
                             spec["precision"], spec["use_cache"], spec["ctranslate2_dir"])
    serve(contestant.run, device)


def run_race(specs: dict[str, dict], reps: int, workdir: Path, fairseq_python: str | None = None):
    """Race the contestants of `specs` (key -> settings), each in a process of this script, but fairseq's: of
    scripts/bench_fairseq.py, run by `fairseq_python`."""
    (workdir / "contestants.json").write_text(json.dumps(specs))
    ours = [sys.executable, __file__, *sys.argv[1:], "--workdir", str(workdir)]
    fairseq = [str(fairseq_python), str(ROOT / "scripts" / "bench_fairseq.py"), "--workdir", str(workdir)]
    return race({key: fairseq if key.startswith(FAIRSEQ) else ours for key in specs}, reps, workdir)


# ---------------------------------------------------------------- fairseq

def check_fairseq(python: str) -> None:
    """Stop in one line unless fairseq imports under `python`."""
    try:
        done = subprocess.run([python, "-c", "import fairseq.trainer"], capture_output=True, text=True)
    except OSError as e:
        sys.exit(f"bench: --fairseq-python {python}: {e.strerror}")
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        sys.exit(f"bench: --fairseq-python {python}: fairseq does not import there ({last})")


def hand_to_fairseq(cfg: ModelConfig, batches: list[Batch], workdir: Path) -> None:
    """What scripts/bench_fairseq.py builds its contestant from: the model, the loss's and Adam's settings, and
    the very batches ours trains on."""
    spec = {"vocab_size": cfg.vocab_size, "model": dataclasses.asdict(cfg), "label_smoothing": LABEL_SMOOTHING,
            "lr": LR}
    (workdir / "fairseq.json").write_text(json.dumps(spec))
    torch.save([{"src": b.src, "tgt_in": b.tgt_in, "tgt_out": b.tgt_out, "pad_id": b.pad_id} for b in batches],
               workdir / "batches.pt")


# ---------------------------------------------------------------- CTranslate2

def save_bench_checkpoint(model: Transformer, tokenizer: Tokenizer, path: Path, steps: int) -> None:
    save_checkpoint(path, {**model_payload(model, tokenizer), "step": steps})


def export_for_ctranslate2(checkpoint: str, workdir: Path) -> str | None:
    """The CTranslate2 copy (float32) of `checkpoint`; None, with a note, where ctranslate2 is missing. The model
    reads sentences without </s>: the export appends it."""
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        print("note: ctranslate2 is not installed (pip install '.[deploy]'): no CTranslate2 comparison")
        return None
    from mt.ctranslate2_export import export_ctranslate2

    return str(export_ctranslate2(checkpoint, workdir / "ctranslate2", quantization="float32"))


# ---------------------------------------------------------------- the run

def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def main() -> None:
    args = parse_args()
    if args.serve:
        return be_contestant(args)
    device = select_device(args.device)
    if args.fairseq_python:
        if device.type != "cpu":
            sys.exit("bench: --fairseq-python races on the CPU only (bench_fairseq.py builds fairseq with --cpu): "
                     "add --device cpu")
        check_fairseq(args.fairseq_python)
    low = select_precision("auto", device)  # what translate.py and training use by default
    workdir = Path(tempfile.mkdtemp(prefix="bench-"))
    laps = [("start", time.perf_counter())]

    tokenizer = bench_tokenizer(args)
    cfg = model_config(args, tokenizer)
    batches = training_batches(args, tokenizer, cfg)
    tokens = sum(b.target_tokens for b in batches)
    threads = torch.get_num_threads()
    print(f"device {device} ({threads} thread{'s' * (threads > 1)}), precision auto = {low}; model d={cfg.d_model} "
          f"heads={cfg.n_heads} layers={cfg.encoder_layers}+{cfg.decoder_layers} ffn={cfg.ffn_dim} "
          f"vocab={cfg.vocab_size} {'pre' if cfg.pre_norm else 'post'}-norm; medians of {args.reps} interleaved "
          f"repetitions after a warm-up")
    print(f"training: {len(batches)} batches of <= {args.batch_tokens} padded tokens, {tokens} target tokens")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    if load is not None and load > 0.5:
        print(f"note: load average {load:.1f} on {os.cpu_count()} CPUs before starting: other work may slow "
              "and skew the measurements")
    laps.append(("set-up", time.perf_counter()))

    names = ["ours fp32", "torch reference fp32"] + [f"ours {low}"] * (low != "fp32") + [
        f"ours {low} torch dropout", f"ours {low} for-loop adam"]
    specs = {f"train:{name}": dict(precision=name.split()[1] if name.startswith("ours") else "fp32",
                                   torch_dropout=name.endswith("torch dropout"),
                                   loop_adam=name.endswith("for-loop adam")) for name in names}
    if args.fairseq_python:
        hand_to_fairseq(cfg, batches, workdir)
        specs[f"{FAIRSEQ} fp32"] = {}  # fairseq's only precision on a CPU (bench_fairseq.py)
    trained = run_race(specs, args.reps, workdir, args.fairseq_python)
    train_rate = {name: tokens / s for name, s in trained.seconds.items()}
    laps.append(("training", time.perf_counter()))

    if args.checkpoint:
        checkpoint, decoding_model = args.checkpoint, f"checkpoint {args.checkpoint}"
    else:  # ours, trained as far as in the race and a little further
        ours = Trainer(f"ours {low}", cfg, batches, device, low)
        for i in range((args.reps + 1) * len(batches) + args.train_steps):
            ours.step(ours.batches[i % len(ours.batches)])
        checkpoint = str(workdir / "bench.pt")
        save_bench_checkpoint(ours.model, tokenizer, Path(checkpoint), ours.steps)
        decoding_model = f"--model {args.model} trained here for {ours.steps} steps ({ours.name}; not converged)"
        del ours
    print(f"decoding model: {decoding_model}")
    sources, references = test_batches(args, tokenizer)
    specs = {f"decode:ours cache {low}": dict(precision=low, use_cache=True),
             "decode:ours cache fp32": dict(precision="fp32", use_cache=True),
             f"decode:ours no cache {low}": dict(precision=low, use_cache=False)}
    ct2_dir = export_for_ctranslate2(checkpoint, workdir)
    if ct2_dir:
        specs["decode:ctranslate2 fp32"] = dict(precision="fp32", use_cache=True, ctranslate2_dir=ct2_dir)
    for spec in specs.values():
        spec.setdefault("ctranslate2_dir", None)
        spec["checkpoint"] = checkpoint
    decoded = run_race(specs, args.reps, workdir)
    outputs = decoded.results
    sentences = sum(len(b) for b in sources)
    decode_rate = {name: sentences / s for name, s in decoded.seconds.items()}
    laps.append(("decoding", time.perf_counter()))
    shutil.rmtree(workdir, ignore_errors=True)

    memory = {**trained.memory, **decoded.memory}
    memory_label = ("torch.cuda.max_memory_allocated of its process, MiB (after set-up alone)" if device.type == "cuda"
                    else "peak RSS of its process, MiB (after set-up alone)")

    def mem(kind: str, name: str) -> str:
        m = memory.get(f"{kind}:{name}")
        return f"{m['peak']:6.0f} ({m['before']:.0f})" if m else "     -"

    print(f"\n{'training':34s} {'target tokens/s':>16s} {'vs torch ref':>12s}   peak memory")
    for name, rate in train_rate.items():
        print(f"  {name:32s} {rate:16.0f} {rate / train_rate['torch reference fp32']:11.2f}x   {mem('train', name)}")
    print(f"\n{'decoding, beam 5, test_2016':34s} {'sentences/s':>16s} {'vs no cache':>12s}   peak memory"
          f"   BLEU  mean length")
    no_cache = decode_rate[f"ours no cache {low}"]
    lengths = {name: statistics.mean(map(len, output)) for name, output in outputs.items()}
    bleu = {name: score(tokenizer.decode(output), references).bleu for name, output in outputs.items()}
    for name, rate in decode_rate.items():
        print(f"  {name:32s} {rate:16.1f} {rate / no_cache:11.2f}x   {mem('decode', name)}   {bleu[name]:10.2f}"
              f"  {lengths[name]:11.1f}")
    print(f"\nsentences: {sentences} in {len(sources)} batches of <= {SEARCH.batch_tokens} source tokens; "
          f"memory: {memory_label}")
    print("seconds: " + ", ".join(f"{name} {end - start:.0f}" for (_, start), (name, end) in zip(laps, laps[1:]))
          + f"; {laps[-1][1] - laps[0][1]:.0f} in all")
    warning = None
    if lengths[f"ours cache {low}"] < 2:
        warning = ("the decoding model ends (nearly) every sentence at once: its decoding figures say little; "
                   "pass --checkpoint of a trained model, or more --train-steps")
        print(f"WARNING: {warning}")

    ct2 = decode_rate.get("ctranslate2 fp32")
    print(json.dumps({
        "device": str(device), "threads": threads, "load_average_at_start": load,
        "precision_auto": low, "quick": args.quick,
        "reps": args.reps, "model": dataclasses.asdict(cfg), "decoding_model": decoding_model,
        "train_target_tokens_per_s": {name: round(rate, 1) for name, rate in train_rate.items()},
        "decode_sentences_per_s": {name: round(rate, 2) for name, rate in decode_rate.items()},
        "decode_mean_output_tokens": {name: round(length, 2) for name, length in lengths.items()},
        "decode_bleu": {name: round(value, 2) for name, value in bleu.items()},
        "peak_memory_mib": {key: round(m["peak"], 1) for key, m in memory.items()},
        "memory_measure": memory_label,
        "train_speedup_vs_torch_reference": ratio(train_rate["ours fp32"], train_rate["torch reference fp32"]),
        "bf16_speedup": ratio(train_rate.get("ours bf16"), train_rate["ours fp32"]),
        # against the previous round's step, which drew dropout masks with torch's bernoulli_
        "train_speedup_vs_torch_dropout": ratio(train_rate[f"ours {low}"], train_rate[f"ours {low} torch dropout"]),
        # against torch's for-loop Adam, the optimizer's CPU default, which training ran until issue 22
        "train_speedup_vs_loop_adam": ratio(train_rate[f"ours {low}"], train_rate[f"ours {low} for-loop adam"]),
        # against fairseq's step on the same model and batches (--fairseq-python): in float32 both, and ours in
        # its default precision against float32, fairseq's only one on a CPU
        "train_speedup_vs_fairseq": ratio(train_rate["ours fp32"], train_rate.get("fairseq fp32")),
        "train_default_vs_fairseq": ratio(train_rate[f"ours {low}"], train_rate.get("fairseq fp32")),
        "decode_cache_speedup": ratio(decode_rate[f"ours cache {low}"], no_cache),
        "decode_vs_ctranslate2": ratio(decode_rate[f"ours cache {low}"], ct2),
        "decode_fp32_vs_ctranslate2": ratio(decode_rate["ours cache fp32"], ct2),
        "warning": warning,
    }))


if __name__ == "__main__":
    main()
