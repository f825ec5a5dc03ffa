"""The package as `pip install .` gives it, not as the checkout holds it: a wheel carries every sub-package and
the shipped configs, and its installed programs work from a folder that is not a checkout."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import ONE_THREAD, ROOT, corpus_overrides


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The project built as a wheel and installed (not editable, no dependencies: this venv has them) into a
    folder of its own: (the wheel, the install folder)."""
    folder = tmp_path_factory.mktemp("install")
    # Built from a copy: setuptools writes build/ and *.egg-info beside the sources it builds.
    source = folder / "source"
    top_level = {".git", ".venv", ".cache", "outputs", "multirun", "build", "data", "docs", "tests"}

    def skipped(folder, names):
        return [n for n in names if (Path(folder) == ROOT and n in top_level) or n.endswith(".egg-info")
                or n == "__pycache__"]

    shutil.copytree(ROOT, source, ignore=skipped)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(folder / "dist"), str(source)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr[-2000:]
    wheel = next((folder / "dist").glob("mt-*.whl"))
    target = folder / "site"
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target),
                           str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return wheel, target


def run_installed(target, program, *args, cwd):
    # The install folder comes first on sys.path, before the checkout's editable install: `mt` is the installed copy.
    env = {**ONE_THREAD, "PYTHONPATH": str(target)}
    return subprocess.run([sys.executable, str(target / "bin" / program), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_wheel_holds_every_sub_package_and_the_configs(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in ("mt", "mt/alignment", "mt/commands", "mt/configs"):
        assert f"{package}/__init__.py" in names, package
    for config in ("train", "translate", "align", "model/tiny", "data/multi30k_de_en", "hydra/job_logging/stderr"):
        assert f"mt/configs/{config}.yaml" in names, config
    checkout = {str(p.relative_to(ROOT)) for p in (ROOT / "mt").rglob("*") if p.suffix in (".py", ".yaml")}
    assert checkout <= names, sorted(checkout - names)


@pytest.mark.slow
def test_installed_programs_run_from_a_folder_that_is_not_a_checkout(installed, small_corpus, tmp_path):
    _, target = installed
    work = tmp_path / "elsewhere"
    work.mkdir()
    for program in ("mt-train", "mt-translate", "mt-align"):
        done = run_installed(target, program, "--help", cwd=work)
        assert done.returncode == 0 and "== Config ==" in done.stdout, (program, done.stderr[-1000:])
    done = run_installed(target, "mt-train", "model=tiny", "data=files", "data.tokenizer.vocab_size=300",
                         "trainer.max_steps=4", "trainer.eval_every=4", "trainer.progress=false", "align.weight=0",
                         "trainer.heatmap_sentences=0",
                         *corpus_overrides(small_corpus, tmp_path), cwd=work)
    assert done.returncode == 0, done.stderr[-2000:]
    checkpoint = work / "outputs" / "latest" / "checkpoints" / "best.pt"
    assert checkpoint.is_file()
    translated = subprocess.run([sys.executable, str(target / "bin" / "mt-translate"), f"checkpoint={checkpoint}"],
                                input="Ein Hund .\n", cwd=work, env={**ONE_THREAD, "PYTHONPATH": str(target)},
                                capture_output=True, text=True, timeout=600)
    assert translated.returncode == 0 and len(translated.stdout.splitlines()) == 1, translated.stderr[-1000:]
    assert "mt" in os.listdir(target) and str(target) in subprocess.run(
        [sys.executable, "-c", "import mt; print(mt.__file__)"], env={**ONE_THREAD, "PYTHONPATH": str(target)},
        cwd=work, capture_output=True, text=True).stdout
