"""Training killed at any moment resumes with nothing lost; Ctrl-C saves; a full disk never costs a checkpoint.

Real train.py processes on real (small) Multi30k files, killed with real signals.
"""

import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ONE_THREAD, ROOT, TINY, corpus_overrides, train_cli

from mt.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.slow  # end-to-end runs of train.py and the benchmarks: `-m "not slow"` skips them

STEPS = 24
RUN = [*TINY, "trainer.eval_every=3", "trainer.heatmap_sentences=0", f"trainer.max_steps={STEPS}"]


def start(run_dir, corpus, *extra):
    """train.py with resume on (a fresh run directory simply starts from scratch), its log in run_dir/out.N.

    All runs share one cache: eflomal, which gives the alignment head its training links, has no seed, so the
    reference run and the interrupted one must read the same cached links to be comparable."""
    run_dir.mkdir(exist_ok=True)
    shared = Path(corpus["train"]).parent / "crash-safety"
    launch = len(list(run_dir.glob("out.*")))
    log = open(run_dir / f"out.{launch}", "w")
    process = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"), *RUN, *corpus_overrides(corpus, shared), "trainer.resume=true",
         f"hydra.run.dir={run_dir}", *extra],
        cwd=ROOT, env=ONE_THREAD, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return process, run_dir / f"out.{launch}"


def final_weights(run_dir):
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert state["step"] == STEPS
    return state["model"]


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


def assert_checkpoints_readable(run_dir):
    for path in (run_dir / "checkpoints").glob("*.pt"):
        load_checkpoint(path)  # raises on a truncated file


def wait_for_log(process, out, text, timeout=300):
    deadline = time.monotonic() + timeout
    while text not in out.read_text():
        assert process.poll() is None, out.read_text()[-3000:]
        assert time.monotonic() < deadline, f"train.py never logged {text!r}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def uninterrupted(small_corpus, tmp_path_factory):
    """The reference run's final weights."""
    tmp_path = tmp_path_factory.mktemp("whole")
    process, out = start(tmp_path / "run", small_corpus)
    assert process.wait(timeout=600) == 0, out.read_text()[-3000:]
    return final_weights(tmp_path / "run")


def kill_while_saving(process, run_dir) -> bool:
    """Freeze the process at moments in quick succession until one finds a checkpoint half-written, and kill it
    there; False if the run ended first."""
    while process.poll() is None:
        process.send_signal(signal.SIGSTOP)
        if any(run_dir.glob(f"checkpoints/.*.{process.pid}.partial")):
            process.send_signal(signal.SIGKILL)
            process.wait()
            return True
        process.send_signal(signal.SIGCONT)
        time.sleep(0.0005)
    return False


def test_runs_killed_at_random_moments_and_in_a_save_resume_to_the_uninterrupted_weights(
        uninterrupted, small_corpus, tmp_path):
    run_dir, rng = tmp_path / "run", random.Random(7)
    # Each kill a random moment after an evaluation with at least two more to come, later than the one before
    # (a restarted run resumes from its last checkpoint, at or before the previous kill).
    for step in sorted(rng.sample(range(3, STEPS - 5, 3), 2)):
        process, out = start(run_dir, small_corpus)
        wait_for_log(process, out, f"step {step} dev BLEU")
        time.sleep(rng.uniform(0.0, 0.05))
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert_checkpoints_readable(run_dir)
    # One more, while a checkpoint is being written: the partial file is left, last.pt is the previous one.
    before = load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"]
    process, out = start(run_dir, small_corpus)
    assert kill_while_saving(process, run_dir), "no save was caught in the act"
    assert any(run_dir.glob("checkpoints/.*.partial"))
    assert_checkpoints_readable(run_dir)
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["step"] >= before

    process, out = start(run_dir, small_corpus)
    assert process.wait(timeout=600) == 0, out.read_text()[-3000:]
    assert not list(run_dir.glob("checkpoints/.*.partial"))  # the resumed run cleared what the kill left
    assert_same_weights(final_weights(run_dir), uninterrupted)
    assert (run_dir / "results.json").is_file()


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_saves_last_pt_and_a_run_resumed_after_ctrl_c_ends_where_an_uninterrupted_one_does(
        uninterrupted, small_corpus, tmp_path, signum, status):
    run_dir = tmp_path / "run"
    process, out = start(run_dir, small_corpus)
    wait_for_log(process, out, "step 6 dev BLEU")
    last = run_dir / "checkpoints" / "last.pt"
    evaluated = run_dir / "checkpoints" / "step_6.pt"
    # The signal goes a moment after the evaluation's save (last.pt is written after step_6.pt), so it lands in a
    # step between evaluations, where only the stop's own save can write last.pt (at step 6 the evaluation did).
    while not (evaluated.exists() and last.exists() and last.stat().st_mtime_ns >= evaluated.stat().st_mtime_ns):
        assert process.poll() is None, out.read_text()[-3000:]
        time.sleep(0.002)
    time.sleep(0.02)
    process.send_signal(signum)
    assert process.wait(timeout=120) == status
    last_line = out.read_text().strip().splitlines()[-1]
    assert last_line.startswith("stopped at step ") and "trainer.resume=true" in last_line, last_line
    stopped_at = int(last_line.split()[3].rstrip(":"))
    assert 6 <= stopped_at < STEPS and load_checkpoint(last)["step"] == stopped_at
    assert "Traceback" not in out.read_text()
    if signum != signal.SIGINT:
        return  # the resume after a stop does not depend on the signal that asked for it

    process, out = start(run_dir, small_corpus)
    assert process.wait(timeout=600) == 0, out.read_text()[-3000:]
    assert f"resumed from {run_dir}/checkpoints/last.pt at step {stopped_at}" in out.read_text()
    assert_same_weights(final_weights(run_dir), uninterrupted)


@pytest.fixture(scope="module")
def three_steps(small_corpus, tmp_path_factory):
    """A finished 3-step run: its folder, holding the run directory `run` and the cache the run filled."""
    folder = tmp_path_factory.mktemp("three")
    first = train_cli(*RUN, *corpus_overrides(small_corpus, folder), "trainer.max_steps=3",
                      f"hydra.run.dir={folder / 'run'}")
    assert first.returncode == 0, first.stderr[-3000:]
    return folder


def copy_of(three_steps, tmp_path):
    """A copy of the 3-step run to go on with, in tmp_path (where corpus_overrides(..., tmp_path) finds its cache)."""
    shutil.copytree(three_steps, tmp_path, dirs_exist_ok=True)
    return tmp_path / "run"


def test_a_disk_that_fills_while_saving_keeps_the_previous_checkpoint(three_steps, small_corpus, tmp_path):
    run_dir = copy_of(three_steps, tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    before = last.read_bytes()
    limit = len(before) - 1  # the next checkpoint cannot fit; logs and the cached data still can

    def small_disk():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    full = train_cli(*RUN, *corpus_overrides(small_corpus, tmp_path), "trainer.max_steps=6", "trainer.resume=true",
                     f"hydra.run.dir={run_dir}", preexec_fn=small_disk)
    assert full.returncode == 2, full.stderr[-3000:]
    line = full.stderr.strip()
    assert len(line.splitlines()) == 1 and "Traceback" not in line
    assert line.startswith(f"error: {run_dir}/checkpoints/") and "could not write it (File too large)" in line
    assert last.read_bytes() == before and load_checkpoint(last)["step"] == 3
    assert not list(run_dir.glob("checkpoints/.*.partial"))


@pytest.mark.parametrize("change, expected", [
    ("model.ffn_dim=96", "its model settings differ from this run's"),
    ("model.norm=scale", "its model settings differ from this run's"),
    ("data.tokenizer.model_type=bpe", "differ"),
])
def test_resuming_with_other_model_or_vocabulary_settings_is_refused_in_one_line(change, expected, three_steps,
                                                                                 small_corpus, tmp_path):
    run_dir = copy_of(three_steps, tmp_path)
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    again = train_cli(*RUN, *corpus_overrides(small_corpus, tmp_path), "trainer.max_steps=6", "trainer.resume=true",
                      change, f"hydra.run.dir={run_dir}")
    assert again.returncode == 2
    line = again.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"error: {run_dir}/checkpoints/last.pt: ")
    assert expected in line and "resume with the same" in line
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before


def test_a_checkpoint_written_before_a_model_setting_existed_resumes_at_its_default(three_steps, small_corpus,
                                                                                    tmp_path):
    run_dir = copy_of(three_steps, tmp_path)
    last = run_dir / "checkpoints" / "last.pt"
    older = load_checkpoint(last)
    for added in ("norm", "fix_norm"):  # the settings this checkpoint format gained last
        del older["model_config"][added]
    save_checkpoint(last, older)
    again = train_cli(*RUN, *corpus_overrides(small_corpus, tmp_path), "trainer.max_steps=4", "trainer.resume=true",
                      f"hydra.run.dir={run_dir}")
    assert again.returncode == 0, again.stderr[-3000:]
    assert load_checkpoint(last)["step"] == 4

    # A setting this version does not know (a newer version's checkpoint) is refused in one line.
    newer = load_checkpoint(last)
    newer["model_config"]["from_a_newer_version"] = 1
    save_checkpoint(last, newer)
    refused = train_cli(*RUN, *corpus_overrides(small_corpus, tmp_path), "trainer.max_steps=5", "trainer.resume=true",
                        f"hydra.run.dir={run_dir}")
    line = refused.stderr.strip()
    assert refused.returncode == 2 and len(line.splitlines()) == 1 and "its model settings differ" in line


def test_training_data_empty_after_filtering_is_one_line(small_corpus, tmp_path):
    result = train_cli(*RUN, *corpus_overrides(small_corpus, tmp_path), "data.max_len=2",
                       f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1
    assert line.startswith("error: no training pairs are left after filtering (of 300)") and "data.max_len=2" in line


def test_stale_partial_files_from_a_killed_save_are_removed_on_start(small_corpus, tmp_path):
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    stale = run_dir / "checkpoints" / ".last.pt.12345.partial"
    stale.write_bytes(b"half a checkpoint")
    shutil.copy(__file__, run_dir / "checkpoints" / "notes.txt")  # not ours to delete
    result = train_cli(*RUN, *corpus_overrides(small_corpus, tmp_path), "trainer.max_steps=1", "trainer.eval_every=1",
                       f"hydra.run.dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert not stale.exists() and (run_dir / "checkpoints" / "notes.txt").exists()
    assert os.path.isfile(run_dir / "checkpoints" / "last.pt")
