"""scripts/bench.py end to end on a tiny trained model: every contestant runs in its own process, and the last
line is the JSON the README's figures come from."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, corpus_overrides

pytestmark = pytest.mark.slow  # end-to-end runs of train.py and the benchmarks: `-m "not slow"` skips them


def test_bench_reports_every_ratio_and_cleans_up(trained, tmp_path):
    checkpoint = trained / "checkpoints" / "best.pt"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--checkpoint", str(checkpoint), "--reps", "1",
         "--train-batches", "1", "--batch-tokens", "256", "--sentences", "12"],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])

    assert figures["threads"] == 1 and figures["reps"] == 1
    train, decode = figures["train_target_tokens_per_s"], figures["decode_sentences_per_s"]
    low = figures["precision_auto"]
    assert set(train) == {"ours fp32", "torch reference fp32", f"ours {low} torch dropout",
                          f"ours {low} for-loop adam"} | (
        {f"ours {low}"} if low != "fp32" else set())
    # Each ratio is the quotient of the speeds printed beside it (no speed is asserted: timing is not a test).
    quotient = pytest.approx  # the speeds are printed rounded
    assert figures["train_speedup_vs_torch_reference"] == quotient(train["ours fp32"] / train["torch reference fp32"],
                                                                   rel=2e-3)
    assert figures["train_speedup_vs_torch_dropout"] == quotient(
        train[f"ours {low}"] / train[f"ours {low} torch dropout"], rel=2e-3)
    assert figures["train_speedup_vs_loop_adam"] == quotient(
        train[f"ours {low}"] / train[f"ours {low} for-loop adam"], rel=2e-3)
    assert figures["decode_cache_speedup"] == quotient(decode[f"ours cache {low}"] / decode[f"ours no cache {low}"],
                                                       rel=2e-3)
    # The cache changes the speed, never the output.
    for measure in ("decode_bleu", "decode_mean_output_tokens"):
        assert figures[measure][f"ours cache {low}"] == figures[measure][f"ours no cache {low}"]
    decoders = set(decode)
    assert {"ours cache fp32", f"ours no cache {low}"} <= decoders
    has_ctranslate2 = importlib.util.find_spec("ctranslate2") is not None
    assert ("ctranslate2 fp32" in decoders) == has_ctranslate2
    assert (figures["decode_vs_ctranslate2"] is not None) == has_ctranslate2
    # One memory figure per contestant, each from its own process: a decoder's is not a trainer's.
    assert set(figures["peak_memory_mib"]) == {f"train:{n}" for n in figures["train_target_tokens_per_s"]} | {
        f"decode:{n}" for n in decoders}
    assert len(set(figures["peak_memory_mib"].values())) > 1
    assert not list(tmp_path.glob("bench-*")), "the bench left its working folder behind"


def test_bench_step_reports_the_real_trainers_speed_and_where_its_time_goes(small_corpus, tmp_path):
    overrides = [*TINY, *corpus_overrides(small_corpus, tmp_path)]
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_step.py"), "--steps", "3", "--warmup", "1", "--profile-steps",
         "2", *overrides], capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["threads"] == 1 and figures["steps"] == 3 and figures["overrides"] == overrides
    assert figures["allocator"] == "mimalloc" and figures["kernel_cache"] == "256"  # as train.py runs
    assert figures["target_tokens_per_s"] > figures["steps_per_s"] > 0 and figures["dev_decode_s"] > 0
    shares = figures["profiled_share_percent"]
    assert sum(shares.values()) == pytest.approx(100, abs=0.5) and shares["matrix products"] > 0
    assert figures["ms_per_step"] == pytest.approx(1000 / figures["steps_per_s"], rel=1e-2)


@pytest.mark.parametrize("interpreter", ["ours", "missing"])
def test_bench_refuses_a_fairseq_interpreter_it_cannot_use_in_one_line(tmp_path, interpreter):
    # fairseq does not import on this project's Python 3.11 (docs/benchmark.md), nor is it a dependency.
    python = sys.executable if interpreter == "ours" else str(tmp_path / "no-such-python")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench.py"), "--fairseq-python", python],
                          capture_output=True, text=True, env={**os.environ, "TMPDIR": str(tmp_path)}, timeout=120)
    assert done.returncode == 1 and done.stdout == ""
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"bench: --fairseq-python {python}: "), done.stderr
    assert ("fairseq does not import there (ModuleNotFoundError" if interpreter == "ours"
            else "No such file or directory") in lines[0]
    assert not list(tmp_path.glob("bench-*"))
