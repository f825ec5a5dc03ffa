"""Which malloc serves the process: the trainer's advice and its heap trimming depend on it."""

import glob
import os
import subprocess
import sys

import pytest

from conftest import ROOT

ASK = "from mt.hardware import allocator; print(allocator())"
# The folders the Makefile looks in.
LIBRARY_FOLDERS = ["/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib"]


def allocator_of_a_process(preload: str | None = None) -> str:
    env = {key: value for key, value in os.environ.items() if key != "LD_PRELOAD"}
    if preload:
        env["LD_PRELOAD"] = preload
    done = subprocess.run([sys.executable, "-c", ASK], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc is Linux's")
def test_a_plain_process_runs_on_glibc():
    assert allocator_of_a_process() == "glibc"


@pytest.mark.parametrize("name", ["tcmalloc", "jemalloc"])
def test_a_preloaded_allocator_is_recognized(name):
    found = [path for folder in LIBRARY_FOLDERS for path in sorted(glob.glob(f"{folder}/lib{name}*.so.[0-9]"))]
    if not found:
        pytest.skip(f"{name} is not installed here")
    assert allocator_of_a_process(found[0]) == name
