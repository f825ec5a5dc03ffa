"""torchrun: two CPU processes (gloo) train exactly as one process accumulating two batches per step."""

import json
import subprocess
import sys

import pytest
import torch
from conftest import ONE_THREAD, ROOT, TINY, corpus_overrides, train_cli

from mt.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow  # end-to-end runs of train.py and the benchmarks: `-m "not slow"` skips them

# No dropout: each process draws its own random masks, so only a dropout-free model can match bit for bit.
SETTINGS = [*TINY, "model.dropout=0", "trainer.precision=fp32", "trainer.device=cpu", "trainer.eval_every=2",
            "trainer.heatmap_sentences=0"]


# faulthandler: a rank that aborts prints where (docs/testing.md, "A flake at teardown, and its fix").
TORCHRUN_ENV = {**ONE_THREAD, "PYTHONFAULTHANDLER": "1"}


def torchrun(*overrides):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "train.py"), *overrides], cwd=ROOT, env=TORCHRUN_ENV, capture_output=True,
                          text=True, timeout=600)


def test_two_processes_equal_one_with_accumulation_two_and_resume_under_torchrun(small_corpus, tmp_path):
    data = corpus_overrides(small_corpus, tmp_path)
    single = train_cli(*SETTINGS, *data, "trainer.accum_steps=2", "trainer.max_steps=4",
                       f"hydra.run.dir={tmp_path / 'single'}")
    assert single.returncode == 0, single.stderr[-3000:]

    # Two processes, stopped at step 2 and resumed to 4 (the 4 steps stay inside the first epoch).
    for steps, resume in ((2, "false"), (4, "true")):
        parallel = torchrun(*SETTINGS, *data, f"trainer.max_steps={steps}", f"trainer.resume={resume}",
                            f"hydra.run.dir={tmp_path / 'parallel'}")
        assert parallel.returncode == 0, (parallel.stdout + parallel.stderr)[-12000:]  # room for faulthandler
        assert "broadcast_buffers" not in parallel.stderr  # torch 2.13's FutureWarning, once per rank and launch

    one = load_checkpoint(tmp_path / "single" / "checkpoints" / "last.pt")
    two = load_checkpoint(tmp_path / "parallel" / "checkpoints" / "last.pt")
    assert one["step"] == two["step"] == 4
    for name, tensor in one["model"].items():
        assert torch.equal(two["model"][name], tensor), name
    assert torch.equal(one["optimizer"]["state"][0]["exp_avg_sq"], two["optimizer"]["state"][0]["exp_avg_sq"])

    # Rank 0 alone wrote the run directory and the log.
    log = (tmp_path / "parallel" / "train.log").read_text()
    assert log.count("] - model: ") == 2 and "2 processes" in log  # one per launch
    assert log.count("dev BLEU") == 2  # steps 2 and (resumed) 4, by rank 0 only
    results = json.loads((tmp_path / "parallel" / "results.json").read_text())
    assert results["processes"] == 2 and results["steps"] == 4


# What a rank does once its run is done: at the interpreter's teardown, gloo's threads could abort a finished run.
ENDING = """
import atexit, logging, sys
from mt import distributed
logging.basicConfig(filename=sys.argv[1], level=logging.INFO)
logging.getLogger("mt").info("the run's last record")
atexit.register(lambda: print("teardown ran", file=sys.stderr))
print("the run's last line", end="")  # still in stdout's buffer: a pipe is block-buffered
distributed.end_launched_process()
sys.exit(3)
"""


BUFFERED = {name: value for name, value in ONE_THREAD.items() if name != "PYTHONUNBUFFERED"}


@pytest.mark.parametrize("world_size, status, teardown", [("2", 0, False), ("1", 3, True)])
def test_a_launched_process_ends_without_the_teardown_once_everything_is_written(tmp_path, world_size, status,
                                                                                  teardown):
    log = tmp_path / "train.log"
    ended = subprocess.run([sys.executable, "-c", ENDING, str(log)], cwd=ROOT, capture_output=True, text=True,
                           env={**BUFFERED, "WORLD_SIZE": world_size}, timeout=120)
    assert ended.returncode == status, ended.stderr
    assert ended.stdout == "the run's last line"
    assert "the run's last record" in log.read_text()
    assert ("teardown ran" in ended.stderr) == teardown
