"""Which malloc serves a process, train.py running under the one the project installs (mimalloc), and the cap on
oneDNN's kernel cache it runs under."""

import glob
import os
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, corpus_overrides, train_cli

from mt.allocator import KERNEL_CACHE_CAPACITY, KERNEL_CACHE_VARIABLE, bundled_mimalloc

pytestmark = pytest.mark.slow  # end-to-end runs of train.py and the benchmarks: `-m "not slow"` skips them

ASK = "from mt.allocator import allocator; print(allocator())"
# Where Debian, Ubuntu and Fedora put the system's allocators.
LIBRARY_FOLDERS = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"]
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and LD_PRELOAD are Linux's")


def allocator_of_a_process(preload: str | None = None) -> str:
    env = {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}
    if preload:
        env["LD_PRELOAD"] = preload
    done = subprocess.run([sys.executable, "-c", ASK], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@linux_only
def test_a_plain_process_runs_on_glibc():
    assert allocator_of_a_process() == "glibc"


@pytest.mark.parametrize("name", ["tcmalloc", "jemalloc"])
def test_a_preloaded_system_allocator_is_recognized(name):
    found = [path for folder in LIBRARY_FOLDERS for path in sorted(glob.glob(f"{folder}/lib{name}*.so.[0-9]"))]
    if not found:
        pytest.skip(f"{name} is not installed here")
    assert allocator_of_a_process(found[0]) == name


@linux_only
def test_the_project_installs_mimalloc_and_it_is_recognized():
    library = bundled_mimalloc()
    assert library is not None, "cmeel-mimalloc is a dependency on Linux: pip install -e ."
    assert allocator_of_a_process(str(library)) == "mimalloc"


def log_of_a_short_run(small_corpus, tmp_path, **environment) -> str:
    run_dir = tmp_path / "run"
    done = train_cli(*TINY, *corpus_overrides(small_corpus, tmp_path), "trainer.max_steps=2", "trainer.eval_every=2",
                     "trainer.heatmap_sentences=0", f"hydra.run.dir={run_dir}",
                     env={**{key: value for key, value in os.environ.items() if key != KERNEL_CACHE_VARIABLE},
                          "OMP_NUM_THREADS": "1", **environment})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "results.json").is_file()
    return (run_dir / "train.log").read_text()


@linux_only
def test_train_py_restarts_itself_under_mimalloc(small_corpus, tmp_path):
    log = log_of_a_short_run(small_corpus, tmp_path)
    lines = [line for line in log.splitlines() if "memory allocator:" in line]
    assert len(lines) == 1 and lines[0].endswith("memory allocator: mimalloc"), lines
    # the process that trains runs under the cap (set before its first oneDNN call)
    assert f"oneDNN kernel cache: {KERNEL_CACHE_CAPACITY} kernels ({KERNEL_CACHE_VARIABLE})" in log


def test_a_users_own_kernel_cache_capacity_is_kept(small_corpus, tmp_path):
    log = log_of_a_short_run(small_corpus, tmp_path, **{KERNEL_CACHE_VARIABLE: "16"})
    lines = [line for line in log.splitlines() if "oneDNN kernel cache:" in line]
    assert len(lines) == 1 and lines[0].endswith(f"oneDNN kernel cache: 16 kernels ({KERNEL_CACHE_VARIABLE})"), lines


def test_where_mimalloc_cannot_serve_training_runs_and_says_what_it_costs(small_corpus, tmp_path):
    # MT_ALLOCATOR=system stands for every case where the restart cannot happen (another OS, no wheel).
    log = log_of_a_short_run(small_corpus, tmp_path, MT_ALLOCATOR="system")
    lines = [line for line in log.splitlines() if "memory allocator:" in line]
    assert len(lines) == 1
    if sys.platform.startswith("linux"):
        assert "glibc's malloc (MT_ALLOCATOR=system" in lines[0] and "memory grows" in lines[0]
