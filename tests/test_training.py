"""Training end to end on real (small) Multi30k files: the CLI, the run directory, resume, and learning."""

import json
import pickle
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY, composed, corpus_overrides, multi30k_lines, shipped_links, train_cli, write_pair
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mt.alignment.head import AlignmentTrainingConfig, gold_distributions
from mt.alignment.links import read_pharaoh
from mt.attention import MultiHeadAttention
from mt.checkpoint import load_checkpoint
from mt.commands.train import run
from mt.config import OptimConfig, TrainConfig, TrainerConfig
from mt.data import DataConfig
from mt.distributed import World
from mt.dropout import Dropout, DropoutRamp
from mt.files import InputError
from mt.model import ModelConfig, Transformer
from mt.tokenizer import EOS_ID, Tokenizer, TokenizerConfig
from mt.trainer import lr_factor
from mt.training_data import TrainingData


def test_train_py_writes_checkpoints_results_tensorboard_and_vocabulary(small_corpus, tmp_path):
    run_dir = tmp_path / "outputs" / "run"
    (tmp_path / "outputs").mkdir()
    (tmp_path / "outputs" / "latest").symlink_to("an-older-run")
    result = train_cli(*TINY, *corpus_overrides(small_corpus, tmp_path), "trainer.max_steps=12",
                       "trainer.eval_every=6", "trainer.heatmap_sentences=3", "hydra.run.dir=outputs/run", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    # The user is told where the run is, at its start and at its end, and outputs/latest now leads to it.
    said = result.stdout + result.stderr
    assert f"run directory: {run_dir}" in said and f"done: {run_dir}/checkpoints/best.pt" in said
    assert (tmp_path / "outputs" / "latest").resolve() == run_dir.resolve()
    assert not (tmp_path / "outputs" / "latest").readlink().is_absolute()  # the folder can move

    for name in ("checkpoints/best.pt", "checkpoints/last.pt", "results.json", "spm.model", "config.yaml"):
        assert (run_dir / name).is_file(), name
    results = json.loads((run_dir / "results.json").read_text())
    assert results["steps"] == 12 and results["best_step"] in (6, 12)
    assert set(results["test"]) == {"flickr"}
    for scores in (results["dev"], results["test"]["flickr"]):
        assert 0 <= scores["bleu"] <= 100 and 0 <= scores["chrf"] <= 100
        assert scores["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")

    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/ppl", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/memory_mb",
            "dev/bleu", "dev/chrf", "test/flickr/bleu"} <= scalars
    assert [e.step for e in events.Scalars("dev/bleu")] == [6, 12]
    assert {"attention/dev_0", "attention/dev_1", "attention/dev_2"} <= set(events.Tags()["images"])
    image = events.Images("attention/dev_0")[-1]
    assert image.encoded_image_string[:4] == b"\x89PNG" and image.width > 100

    # The checkpoint alone is enough to translate: weights, model settings and the vocabulary travel with it.
    checkpoint = load_checkpoint(run_dir / "checkpoints" / "best.pt")
    tokenizer = Tokenizer(checkpoint["spm_model"])
    assert checkpoint["spm_model"] == (run_dir / "spm.model").read_bytes()
    model = Transformer(ModelConfig(**checkpoint["model_config"]))
    model.load_state_dict(checkpoint["model"])
    assert tokenizer.vocab_size == model.cfg.vocab_size == 300
    assert torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["step"] == 12



def test_resumed_run_with_averaging_and_sampling_equals_an_uninterrupted_one(small_corpus, tmp_path):
    def config(max_steps, resume):
        return TrainConfig(
            data=DataConfig(train=small_corpus["train"], dev=small_corpus["dev"], cache_dir=str(tmp_path / "cache"),
                            batch_tokens=1300, tokenizer=TokenizerConfig(vocab_size=300), sampling_alpha=0.3),
            model=ModelConfig(vocab_size=0, d_model=32, n_heads=2, encoder_layers=1, decoder_layers=1, ffn_dim=64,
                              activation_dropout=0.1),
            optim=OptimConfig(warmup_steps=5),
            # 300 pairs make ~14 batches: the interruption falls inside the second epoch
            # the dropout ramp runs past the interruption: a resumed run must go on from the step's rate
            trainer=TrainerConfig(max_steps=max_steps, eval_every=9, resume=resume, progress=False,
                                  heatmap_sentences=0, ema_decay=0.9, keep_checkpoints=2, initial_dropout=0.05,
                                  dropout_ramp_steps=24),
            align=AlignmentTrainingConfig(layer=-1, **shipped_links(small_corpus)),  # the one decoder layer
        )

    run(config(27, resume=False), tmp_path / "whole")
    run(config(18, resume=False), tmp_path / "parts")
    first_half = load_checkpoint(tmp_path / "parts" / "checkpoints" / "last.pt")
    assert first_half["step"] == 18 and first_half["epoch"] == 1
    results = run(config(27, resume=True), tmp_path / "parts")
    assert results["steps"] == 27 and results["best_weights"] in ("raw", "ema")

    whole = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")
    parts = load_checkpoint(tmp_path / "parts" / "checkpoints" / "last.pt")
    assert parts["step"] == whole["step"] == 27
    assert (parts["epoch"], parts["batch_in_epoch"]) == (whole["epoch"], whole["batch_in_epoch"])
    for name, tensor in whole["model"].items():
        assert torch.equal(parts["model"][name], tensor), name
    for name, tensor in whole["ema"]["weights"].items():
        assert torch.equal(parts["ema"]["weights"][name], tensor), name
    assert torch.equal(parts["optimizer"]["state"][0]["exp_avg"], whole["optimizer"]["state"][0]["exp_avg"])
    # The last two evaluation checkpoints are kept, and best.pt holds the weights that scored best on dev.
    assert sorted(p.name for p in (tmp_path / "whole" / "checkpoints").glob("step_*.pt")) == ["step_18.pt",
                                                                                            "step_27.pt"]
    best = load_checkpoint(tmp_path / "whole" / "checkpoints" / "best.pt")
    evaluations = [load_checkpoint(tmp_path / "whole" / "checkpoints" / f"step_{n}.pt")["dev"]["bleu"]
                   for n in (18, 27)]
    assert best["dev"]["bleu"] >= max(evaluations)


def sampled_config(small_corpus, tmp_path) -> TrainConfig:
    return TrainConfig(data=DataConfig(train=small_corpus["train"], dev=small_corpus["dev"], batch_tokens=300,
                                       cache_dir=str(tmp_path / "cache"), tokenizer=TokenizerConfig(vocab_size=300),
                                       sampling_alpha=0.5))


def test_sampled_epochs_are_batched_on_the_sampled_lengths_and_reproducible(small_corpus, tmp_path):
    cfg = sampled_config(small_corpus, tmp_path)
    training = TrainingData(cfg, World(), tmp_path, aligning=False)
    (order, sampled), (again, resampled) = training.epoch(0), TrainingData(cfg, World(), tmp_path, False).epoch(0)
    assert order == again and sampled.tgt.rows(range(len(training.train))) == resampled.tgt.rows(
        range(len(training.train)))  # a resumed run rebuilds the epoch it stopped in
    assert sorted(i for indices in order for i in indices) == list(range(len(training.train)))
    best = training.train.select_columns(["src_ids", "tgt_ids"])
    for indices in order:
        batch = training.batch(indices, sampled)
        # the budget holds what the step reads: the sampled pieces, padded
        assert len(indices) * max(batch.src.size(1), batch.tgt_out.size(1)) <= 300
        # each row is its own pair's text, segmented otherwise
        assert training.tokenizer.decode(sampled.tgt.rows(indices)) == training.tokenizer.decode(
            [best[i]["tgt_ids"] for i in indices])
    everything = range(len(training.train))
    assert sampled.src.rows(everything) != best["src_ids"] and sampled.tgt.rows(everything) != best["tgt_ids"]
    assert training.epoch(1)[1].src.rows(everything) != sampled.src.rows(everything)  # afresh each epoch


@pytest.mark.parametrize("source_alpha, target_alpha", [(0.5, 0.0), (0.0, 0.5)])
def test_a_side_at_alpha_0_keeps_its_best_segmentation_while_the_other_is_sampled(small_corpus, tmp_path,
                                                                                  source_alpha, target_alpha):
    cfg = sampled_config(small_corpus, tmp_path)
    cfg.data.sampling_alpha, cfg.data.target_sampling_alpha = source_alpha, target_alpha
    training = TrainingData(cfg, World(), tmp_path, aligning=False)
    order, sampled = training.epoch(0)
    everything = range(len(training.train))
    best = training.train.select_columns(["src_ids", "tgt_ids"])
    assert (sampled.src.rows(everything) == best["src_ids"]) == (source_alpha == 0)
    assert (sampled.tgt.rows(everything) == best["tgt_ids"]) == (target_alpha == 0)
    kept = "tgt" if target_alpha == 0 else "src"
    for indices in order:
        batch = training.batch(indices, sampled)
        rows = (batch.tgt_out if kept == "tgt" else batch.src).tolist()
        # the batch holds the kept side's best pieces, EOS ended
        assert [row[:row.index(EOS_ID)] for row in rows] == [best[i][f"{kept}_ids"] for i in indices]


def test_word_dropout_puts_unk_in_the_inputs_only_at_its_rate_and_a_resumed_run_draws_the_same(small_corpus,
                                                                                                 tmp_path):
    def config(source: float, target: float) -> TrainConfig:
        return TrainConfig(data=DataConfig(train=small_corpus["train"], dev=small_corpus["dev"], batch_tokens=300,
                                           cache_dir=str(tmp_path / "cache"), tokenizer=TokenizerConfig(vocab_size=300),
                                           source_word_dropout=source, target_word_dropout=target))

    def epoch_zero(training: TrainingData, start: int = 0) -> list:
        place = SimpleNamespace(epoch=0, batch_in_epoch=start, step=0)
        stream = training.stream(place)
        return [next(stream) for _ in range(start, training.batches_per_epoch)]

    noisy, plain = (TrainingData(config(*rates), World(), tmp_path, aligning=False) for rates in ((0.3, 0.1), (0, 0)))
    special = noisy.tokenizer.special
    unk = special.unk
    counts = {"src": [0, 0], "tgt_in": [0, 0]}  # [replaced, could have been]
    for dropped, clean in zip(epoch_zero(noisy), epoch_zero(plain), strict=True):
        assert torch.equal(dropped.tgt_out, clean.tgt_out)  # the labels stay
        # padding and EOS (sources) or BOS (decoder inputs) are never replaced
        for side, spared in (("src", (special.pad, special.eos)), ("tgt_in", (special.pad, special.bos))):
            before, after = getattr(clean, side), getattr(dropped, side)
            changed = before.ne(after)
            assert after[changed].eq(unk).all()
            open_to_it = ~sum(before.eq(token) for token in (unk, *spared)).bool()
            assert not (changed & ~open_to_it).any()
            counts[side][0] += int(changed.sum())
            counts[side][1] += int(open_to_it.sum())
    assert counts["src"][1] > 3000 and counts["tgt_in"][1] > 3000
    assert abs(counts["src"][0] / counts["src"][1] - 0.3) < 0.03
    assert abs(counts["tgt_in"][0] / counts["tgt_in"][1] - 0.1) < 0.02
    # Resumed at the fourth batch, a run reads the batches an uninterrupted one read from there, noise and all.
    again = epoch_zero(TrainingData(config(0.3, 0.1), World(), tmp_path, aligning=False), start=3)
    for resumed, uninterrupted in zip(again, epoch_zero(noisy)[3:], strict=True):
        assert torch.equal(resumed.src, uninterrupted.src) and torch.equal(resumed.tgt_in, uninterrupted.tgt_in)


@pytest.mark.parametrize("sampling_alpha", [0.0, 0.5])
def test_bidirectional_steps_read_every_pair_both_ways_then_the_asked_direction_from_a_new_epoch(
        small_corpus, tmp_path, sampling_alpha):
    both_ways_steps = 60  # 600 pairs both ways make 49-53 batches: the steps both ways end inside the second epoch
    cfg = TrainConfig(data=DataConfig(train=small_corpus["train"], dev=small_corpus["dev"], batch_tokens=600,
                                      cache_dir=str(tmp_path / "cache"), tokenizer=TokenizerConfig(vocab_size=300),
                                      sampling_alpha=sampling_alpha, bidirectional_steps=both_ways_steps),
                      align=AlignmentTrainingConfig(**shipped_links(small_corpus)))
    training = TrainingData(cfg, World(), tmp_path, aligning=True)
    pairs, both_ways, decode = training.train, training.both_ways, training.tokenizer.decode
    assert len(both_ways) == 2 * len(pairs) == 600
    for i in (0, 7, 299):
        given, turned = both_ways[i], both_ways[len(pairs) + i]
        assert given == pairs[i]
        assert (turned["src_ids"], turned["tgt_ids"]) == (given["tgt_ids"], given["src_ids"])
        assert (turned["src_len"], turned["tgt_len"]) == (given["tgt_len"], given["src_len"])
        assert read_pharaoh(turned["links"])[1] == {(j, i) for i, j in read_pharaoh(given["links"])[1]}
    # A turned pair's gold rows are its turned links': the head learns the turned direction's alignment.
    turned_rows = list(range(len(pairs), len(pairs) + 6))
    batch = training.batch(turned_rows, both_ways=True)
    rows = both_ways.select(turned_rows)
    assert torch.equal(batch.alignment, gold_distributions(rows["src_ids"], rows["tgt_ids"], rows["links"],
                                                           training.tokenizer, batch.src.size(1),
                                                           batch.tgt_in.size(1), cfg.align.null))

    def read(position, steps: int) -> list:
        """The batches of `steps` optimizer steps from `position`, as the trainer takes them."""
        stream, batches = training.stream(position), []
        for _ in range(steps):
            batches.append(next(stream))
            position.step += 1
        return batches

    def texts(batch) -> set:  # (source, target) of each row, whichever way it was segmented
        return set(zip(decode([row[row.ne(0)][:-1].tolist() for row in batch.src]),
                       decode([row[row.ne(0)][:-1].tolist() for row in batch.tgt_out])))

    given = set(zip(decode(pairs[:]["src_ids"]), decode(pairs[:]["tgt_ids"])))
    turned = {(tgt, src) for src, tgt in given}
    uninterrupted = SimpleNamespace(epoch=0, batch_in_epoch=0, step=0)
    first = read(uninterrupted, both_ways_steps)
    assert uninterrupted.epoch == 1  # the steps both ways read more than one epoch of them
    read_first = set().union(*map(texts, first))
    assert read_first <= given | turned and read_first & given and read_first & turned
    # The asked direction starts a new epoch where the steps both ways end, and reads nothing else.
    stopped_at = (uninterrupted.epoch, uninterrupted.batch_in_epoch)
    after = read(uninterrupted, 8)
    assert uninterrupted.epoch == 2 and all(texts(batch) <= given for batch in after)
    order, segmentation = training.epoch(2)
    assert [texts(batch) for batch in after] == [texts(training.batch(indices, segmentation))
                                                 for indices in order[:8]]
    # Resumed from a checkpoint of either phase, a run reads what the uninterrupted one read.
    resumed = read(SimpleNamespace(epoch=stopped_at[0], batch_in_epoch=stopped_at[1], step=both_ways_steps), 8)
    assert [texts(batch) for batch in resumed] == [texts(batch) for batch in after]
    again = read(SimpleNamespace(epoch=0, batch_in_epoch=5, step=5), both_ways_steps - 5 + 8)
    assert [texts(batch) for batch in again] == [texts(batch) for batch in first[5:] + after]


# Samples epoch 0 of the pickled config CFG in a process of its own and pickles what it sampled into OUT.
SAMPLE_EPOCH = """
import pickle, sys
from pathlib import Path
from mt.distributed import World
from mt.dropout import Dropout, DropoutRamp
from mt.training_data import TrainingData
cfg, run_dir, out = sys.argv[1:]
order, sampled = TrainingData(pickle.loads(Path(cfg).read_bytes()), World(), Path(run_dir), aligning=False).epoch(0)
rows = range(len(sampled.src_len))
Path(out).write_bytes(pickle.dumps([order, sampled.src.rows(rows), sampled.tgt.rows(rows)]))
"""


def test_a_sampled_epoch_is_sampled_alike_by_another_process(small_corpus, tmp_path):
    """A resumed run, or the same command run again, is a new process: it must sample each epoch as the first
    did (SentencePiece 0.2.2 and 0.2.3 sample otherwise in each process, so pyproject.toml keeps them out)."""
    cfg = sampled_config(small_corpus, tmp_path)
    order, sampled = TrainingData(cfg, World(), tmp_path, aligning=False).epoch(0)
    rows = range(len(sampled.src_len))
    (tmp_path / "cfg.pkl").write_bytes(pickle.dumps(cfg))
    done = subprocess.run([sys.executable, "-c", SAMPLE_EPOCH, str(tmp_path / "cfg.pkl"), str(tmp_path),
                           str(tmp_path / "sampled.pkl")], capture_output=True, text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert pickle.loads((tmp_path / "sampled.pkl").read_bytes()) == [order, sampled.src.rows(rows),
                                                                     sampled.tgt.rows(rows)]


def test_a_tiny_model_overfits_a_few_dozen_pairs(tmp_path):
    src, tgt = multi30k_lines("train", "de", 32), multi30k_lines("train", "en", 32)
    pattern = write_pair(tmp_path / "c", "pairs", src, tgt)
    cfg = TrainConfig(
        data=DataConfig(train=pattern, dev=pattern, cache_dir=str(tmp_path / "cache"), batch_tokens=2000,
                        tokenizer=TokenizerConfig(vocab_size=400)),
        model=ModelConfig(vocab_size=0, d_model=64, n_heads=2, encoder_layers=2, decoder_layers=2, ffn_dim=256,
                          dropout=0.0),
        optim=OptimConfig(lr=3e-3, warmup_steps=30),
        trainer=TrainerConfig(max_steps=300, eval_every=100, label_smoothing=0.0, progress=False, heatmap_sentences=0,
                              patience=0),
        align=AlignmentTrainingConfig(weight=0.0),  # translation alone: eflomal would take longer than the run
    )
    results = run(cfg, tmp_path / "run")
    assert results["dev"]["bleu"] > 90, results["dev"]


def messages(error: BaseException) -> str:
    """An exception's message with those of its causes (Hydra wraps OmegaConf's)."""
    found = []
    while error is not None:
        found.append(str(error))
        error = error.__cause__ or error.__context__
    return "\n".join(found)


@pytest.mark.parametrize("override, expected", [
    ("trainer.max_stepz=5", "Could not override 'trainer.max_stepz'"),
    ("trainer.max_steps=many", "trainer.max_steps"),
    ("model=huge", "Could not find 'model/huge'"),
    ("optim.name=adamx", "Invalid value 'adamx', expected one of [adam, adamw]"),
    ("optim.schedule=cosine", "Invalid value 'cosine', expected one of [inverse_sqrt, linear]"),
    ("data.source=hubb", "Invalid value 'hubb', expected one of [files, hub]"),
    ("trainer.precision=bf61", "expected one of [auto, fp32, bf16, fp16]"),
    ("trainer.device=gpu", "expected one of [auto, cpu, cuda]"),
])
def test_a_wrong_override_is_refused_by_the_schema(override, expected):
    assert composed("train", "trainer.max_steps=5").trainer.max_steps == 5  # a right one is taken
    with pytest.raises(Exception) as refused:
        composed("train", override)
    assert expected in messages(refused.value)


def test_a_wrong_override_on_the_command_line_stops_before_anything_runs(tmp_path):
    result = train_cli("optim.name=adamx", f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode != 0
    assert "Invalid value 'adamx', expected one of [adam, adamw]" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "cache").exists()  # no corpus read, no SentencePiece


def test_a_hub_dataset_while_offline_fails_at_once_with_one_line(tmp_path):
    result = train_cli("data=hub", "data.hub_name=surely/not-cached", f"data.cache_dir={tmp_path}",
                       f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: Hub dataset 'surely/not-cached'")
    assert "not in the local cache" in lines[-1] and "data=files" in lines[-1]
    assert "Traceback" not in result.stderr


def test_a_missing_data_file_names_it_in_one_line(tmp_path):
    result = train_cli(*TINY, f"data.train={tmp_path}/nope", f"data.dev={tmp_path}/nope",
                       f"data.cache_dir={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"error: {tmp_path}/nope.de: no such file"


def test_multirun_sweeps_write_one_run_directory_each(small_corpus, tmp_path):
    result = train_cli("-m", *TINY, *corpus_overrides(small_corpus, tmp_path), "trainer.max_steps=2",
                       "trainer.eval_every=2", "trainer.seed=1,2", "trainer.heatmap_sentences=0",
                       f"hydra.sweep.dir={tmp_path / 'sweep'}")
    assert result.returncode == 0, result.stderr[-3000:]
    for job in ("0", "1"):
        assert (tmp_path / "sweep" / job / "results.json").is_file()
    seeds = [json.loads((tmp_path / "sweep" / job / "results.json").read_text()) for job in ("0", "1")]
    assert all(s["steps"] == 2 for s in seeds)


def tiny_config(corpus, tmp_path, optim=None, **trainer) -> TrainConfig:
    """A one-layer model on the 300 pairs, evaluated on the 12 dev pairs only."""
    return TrainConfig(
        data=DataConfig(train=corpus["train"], dev=corpus["dev"], cache_dir=str(tmp_path / "cache"),
                        batch_tokens=1000, tokenizer=TokenizerConfig(vocab_size=300)),
        model=ModelConfig(vocab_size=0, d_model=32, n_heads=2, encoder_layers=1, decoder_layers=1, ffn_dim=64),
        optim=optim or OptimConfig(warmup_steps=5),
        trainer=TrainerConfig(**{"max_steps": 3, "eval_every": 3, "progress": False, "heatmap_sentences": 0,
                                 **trainer}),
        align=AlignmentTrainingConfig(weight=0.0),
    )


def final_state(cfg, run_dir):
    run(cfg, run_dir)
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")


def test_adamw_decays_the_weights_adam_does_not(small_corpus, tmp_path):
    adam = final_state(tiny_config(small_corpus, tmp_path), tmp_path / "adam")
    adamw = final_state(tiny_config(small_corpus, tmp_path, OptimConfig(name="adamw", warmup_steps=5,
                                                                        weight_decay=0.01)), tmp_path / "adamw")
    no_decay = final_state(tiny_config(small_corpus, tmp_path, OptimConfig(name="adamw", warmup_steps=5)),
                           tmp_path / "no_decay")
    assert adamw["optimizer"]["param_groups"][0]["weight_decay"] == 0.01 and adamw["config"]["optim"]["name"] == "adamw"
    name = "decoder.0.ffn.0.weight"
    assert not torch.equal(adamw["model"][name], adam["model"][name])
    assert torch.equal(no_decay["model"][name], adam["model"][name])  # AdamW without decay is Adam
    # Decoupled: Adam given the same weight_decay adds it to the gradient (L2) and ends elsewhere.
    adam_l2 = final_state(tiny_config(small_corpus, tmp_path, OptimConfig(name="adam", warmup_steps=5,
                                                                          weight_decay=0.01)), tmp_path / "adam_l2")
    assert not torch.equal(adam_l2["model"][name], adamw["model"][name])


@pytest.mark.parametrize("sampling_alpha", [0.0, 0.5])
def test_max_epochs_ends_training_after_that_many_passes(small_corpus, tmp_path, sampling_alpha):
    cfg = tiny_config(small_corpus, tmp_path, max_steps=None, max_epochs=1, eval_every=100)
    cfg.data.sampling_alpha = sampling_alpha
    results = run(cfg, tmp_path / "r")
    state = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert (state["epoch"], state["batch_in_epoch"]) in ((0, results["steps"]), (1, 0))  # one whole pass
    assert 10 <= results["steps"] <= 20  # 300 pairs in batches of 1,000 tokens
    # under sampling, the pass is the sampled epoch's batches, not the best segmentation's
    first_epoch, _ = TrainingData(cfg, World(), tmp_path / "r", aligning=False).epoch(0)
    assert results["steps"] == len(first_epoch)


def test_linear_schedule_warms_up_then_falls_to_zero_at_the_runs_last_step(small_corpus, tmp_path):
    optim = OptimConfig(lr=1e-3, warmup_steps=4, schedule="linear")
    # The end comes from max_epochs here, so the schedule learns it from the data, not from max_steps.
    results = run(tiny_config(small_corpus, tmp_path, optim, max_steps=None, max_epochs=1, eval_every=100),
                  tmp_path / "r")
    steps = results["steps"]
    used = [lr_factor(optim, steps, step) for step in range(steps)]  # by optimizer steps 1 .. steps
    assert used[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(earlier > later > 0 for earlier, later in zip(used[3:], used[4:]))
    assert used[-1] == pytest.approx(1 / (steps - 3))
    state = load_checkpoint(tmp_path / "r" / "checkpoints" / "last.pt")
    assert state["optimizer"]["param_groups"][0]["lr"] == 0.0  # what a step after the last would use
    # The default is unchanged: lr * sqrt(warmup / step) after warm-up, whatever the run's length.
    assert lr_factor(OptimConfig(), 6000, 3999) == lr_factor(OptimConfig(), 100_000, 3999) == 0.5


def test_a_run_without_an_end_is_refused_in_one_line(small_corpus, tmp_path):
    with pytest.raises(InputError, match="set trainer.max_steps or trainer.max_epochs"):
        run(tiny_config(small_corpus, tmp_path, OptimConfig(schedule="linear"), max_steps=None), tmp_path / "r")
    assert not (tmp_path / "r" / "checkpoints" / "last.pt").exists()


def test_patience_stops_when_dev_bleu_stops_improving(small_corpus, tmp_path):
    # Learning rate 0: the model never changes, so dev BLEU cannot beat its first evaluation.
    frozen = OptimConfig(lr=0.0, warmup_steps=1)
    results = run(tiny_config(small_corpus, tmp_path, frozen, max_steps=20, eval_every=1, patience=2), tmp_path / "r")
    assert results["steps"] == 3 and results["best_step"] == 1


def test_clip_norm_zero_leaves_gradients_unclipped(small_corpus, tmp_path):
    name = "decoder.0.ffn.0.weight"
    off = final_state(tiny_config(small_corpus, tmp_path, clip_norm=0.0), tmp_path / "off")["model"][name]
    huge = final_state(tiny_config(small_corpus, tmp_path, clip_norm=1e9), tmp_path / "huge")["model"][name]
    tight = final_state(tiny_config(small_corpus, tmp_path, clip_norm=1e-4), tmp_path / "tight")["model"][name]
    assert torch.equal(off, huge) and not torch.equal(off, tight)


def test_rdrop_without_dropout_is_the_plain_step_and_with_dropout_trains_on_its_divergence(small_corpus, tmp_path):
    """Without dropout R-Drop's two passes are equal, so its step is the plain step (the KL is 0 and the loss
    is normalized by both passes' tokens) on a batch of half the budget; with dropout they differ, and the
    divergence is logged."""
    def config(dropout, rdrop_weight):
        cfg = tiny_config(small_corpus, tmp_path, rdrop_weight=rdrop_weight)
        cfg.model.dropout = dropout
        cfg.data.batch_tokens *= 2 if rdrop_weight else 1  # the two passes share the budget: the same batches
        cfg.align = AlignmentTrainingConfig(layer=-1, **shipped_links(small_corpus))  # the head sees both passes
        return cfg

    name = "decoder.0.ffn.0.weight"
    plain = final_state(config(0.0, 0.0), tmp_path / "plain")["model"][name]
    rdrop = final_state(config(0.0, 5.0), tmp_path / "rdrop")["model"][name]
    torch.testing.assert_close(rdrop, plain, rtol=1e-4, atol=1e-5)

    dropped = final_state(config(0.3, 0.0), tmp_path / "dropped")["model"][name]
    rdrop_dropped = final_state(config(0.3, 5.0), tmp_path / "rdrop_dropped")["model"][name]
    assert not torch.allclose(rdrop_dropped, dropped, rtol=1e-3, atol=1e-4)
    events = EventAccumulator(str(tmp_path / "rdrop_dropped" / "tb")).Reload()
    divergences = [event.value for event in events.Scalars("train/rdrop_kl")]
    assert divergences and all(value > 0 for value in divergences)
    assert "train/rdrop_kl" not in EventAccumulator(str(tmp_path / "dropped" / "tb")).Reload().Tags()["scalars"]


def test_distillation_from_the_moving_average_trains_on_its_divergence(small_corpus, tmp_path):
    """Distillation's teacher is the moving average without dropout. Where the average is the weights themselves
    (a decay of ~0) and nothing drops out, teacher and model agree: the divergence is 0 and the step is the plain
    one with the cross-entropy weighed (1 - distill_weight), which Adam's normalized update leaves where it was.
    With dropout they differ, the divergence is logged, and the weights go elsewhere. Before distill_start the run
    is the plain run, bit for bit."""
    def config(dropout, distill_weight, distill_start=0):
        cfg = tiny_config(small_corpus, tmp_path, ema_decay=1e-9, distill_weight=distill_weight,
                          distill_start=distill_start, clip_norm=0.0, precision="fp32")
        cfg.model.dropout = dropout
        return cfg

    name = "decoder.0.ffn.0.weight"
    plain = final_state(config(0.0, 0.0), tmp_path / "plain")["model"][name]
    agreeing = final_state(config(0.0, 0.5), tmp_path / "agreeing")["model"][name]
    torch.testing.assert_close(agreeing, plain, rtol=1e-3, atol=1e-5)
    dropped = final_state(config(0.3, 0.0), tmp_path / "dropped")["model"][name]
    distilled = final_state(config(0.3, 0.5), tmp_path / "distilled")["model"][name]
    assert not torch.allclose(distilled, dropped, rtol=1e-3, atol=1e-4)
    divergences = [event.value for event in
                   EventAccumulator(str(tmp_path / "distilled" / "tb")).Reload().Scalars("train/distill_kl")]
    assert divergences and all(value > 0 for value in divergences)
    late = final_state(config(0.3, 0.5, distill_start=3), tmp_path / "late")["model"][name]
    assert torch.equal(late, dropped)


def test_dropout_ramp_starts_at_its_initial_rate_and_reaches_model_dropout_at_its_last_step(small_corpus, tmp_path):
    """A ramp that starts at model.dropout is the plain run, bit for bit; one that starts lower trains otherwise;
    after the ramp every residual and embedding dropout drops at model.dropout, and attention dropout keeps its own."""
    def config(**ramp):
        cfg = tiny_config(small_corpus, tmp_path, max_steps=4, eval_every=4, **ramp)
        cfg.model.dropout, cfg.model.attention_dropout = 0.3, 0.1
        return cfg

    name = "decoder.0.ffn.0.weight"
    plain = final_state(config(), tmp_path / "plain")["model"][name]
    level = final_state(config(initial_dropout=0.3, dropout_ramp_steps=4), tmp_path / "level")["model"][name]
    assert torch.equal(level, plain)
    ramped = final_state(config(initial_dropout=0.05, dropout_ramp_steps=4), tmp_path / "ramped")["model"][name]
    assert not torch.allclose(ramped, plain, rtol=1e-3, atol=1e-4)

    model = Transformer(ModelConfig(vocab_size=50, d_model=16, n_heads=2, encoder_layers=1, decoder_layers=1,
                                    ffn_dim=32, dropout=0.3, attention_dropout=0.1))
    ramp = DropoutRamp(model, 0.3, 0.1, 4)
    rates = []
    for step in range(6):
        ramp(step)
        rates.append({module.p for module in model.modules() if isinstance(module, Dropout)})
    assert all(len(rate) == 1 for rate in rates)
    assert [rate.pop() for rate in rates] == pytest.approx([0.1, 0.15, 0.2, 0.25, 0.3, 0.3])
    assert {module.dropout for module in model.modules() if isinstance(module, MultiHeadAttention)} == {0.1}


@pytest.mark.parametrize("trainer, expected", [
    ({"initial_dropout": 0.1}, "trainer.initial_dropout=0.1 needs trainer.dropout_ramp_steps above 0"),
    ({"distill_weight": 0.5, "ema_decay": 0.0}, "trainer.distill_weight=0.5 distills from the moving average"),
    ({"distill_weight": 0.5, "rdrop_weight": 1.0}, "trainer.distill_weight and trainer.rdrop_weight"),
])
def test_distillation_without_a_moving_average_or_with_rdrop_is_refused_before_reading_anything(
        small_corpus, tmp_path, trainer, expected):
    with pytest.raises(InputError) as error:
        run(tiny_config(small_corpus, tmp_path, **trainer), tmp_path / "run")
    assert str(error.value).startswith(expected)
    assert not (tmp_path / "cache").exists()  # no corpus read, no SentencePiece trained
