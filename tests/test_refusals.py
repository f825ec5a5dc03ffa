"""Nothing a user types destroys a finished file, and every bad value is refused before work starts.

Each refusal is an InputError, which every command prints as one line (mt/cli.py): most cases run the command's
job in this process on the configuration Hydra composes for its command line; one of each kind runs the command
line itself, to show the exit status, the single line and that every file that was there is unchanged."""

import os
import resource
import shutil
import subprocess
import sys

import pytest
from conftest import ONE_THREAD, ROOT, TINY, composed, corpus_overrides, train_cli
from test_checkpoint import flip_a_weight_byte

from mt import cli
from mt.commands import align, translate
from mt.commands.average_checkpoints import average_checkpoints
from mt.files import InputError, exclusive


def command(script, *overrides, limit_file_size=None, cwd=None):
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_file_size, limit_file_size))

    return subprocess.run([sys.executable, str(ROOT / script), *map(str, overrides)], env=ONE_THREAD, cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          preexec_fn=limit if limit_file_size else None)


def snapshot(folder):
    return {path: path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def refused_in_one_line(done, *expected):
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    lines = done.stderr.strip().splitlines()
    assert "Traceback" not in done.stderr and len(lines) == 1, done.stderr[-2000:]
    for part in expected:
        assert part in lines[0], lines[0]


def refused(job, config_name, *overrides) -> str:
    with pytest.raises(InputError) as error:
        job.run(composed(config_name, *overrides))
    message = str(error.value)
    assert "\n" not in message
    return message


@pytest.fixture
def work(trained, tmp_path, monkeypatch):
    """A folder (the working directory) with a copy of a trained run's best.pt and of it under another name, an
    input, a reference, an earlier output, a hard link to the input and a symbolic link to the checkpoint."""
    shutil.copy(trained / "checkpoints" / "best.pt", tmp_path / "best.pt")
    shutil.copy(trained / "checkpoints" / "best.pt", tmp_path / "other.pt")
    (tmp_path / "in.de").write_text("Ein Hund läuft .\nZwei Männer .\n", encoding="utf-8")
    (tmp_path / "ref.en").write_text("A dog runs .\nTwo men .\n", encoding="utf-8")
    (tmp_path / "old.en").write_text("an earlier translation\n", encoding="utf-8")
    os.link(tmp_path / "in.de", tmp_path / "hard-link.de")
    (tmp_path / "soft-link.pt").symlink_to("best.pt")
    (tmp_path / "a-folder").mkdir()
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("outputs, expected", [
    (["output=best.pt"], "output=best.pt is the input checkpoint=best.pt"),
    (["output=soft-link.pt"], "output=soft-link.pt is the input checkpoint=best.pt"),
    (["output=../{name}/in.de"], "is the input input=in.de"),
    (["output=hard-link.de"], "output=hard-link.de is the input input=in.de"),
    (["output=ref.en", "reference=ref.en"], "output=ref.en is the input reference=ref.en"),
    (["output=out.en", "alignments=out.en"], "alignments=out.en is also output"),
    (["output=out.en", "attention_dump=./out.en"], "attention_dump=out.en is also output"),
    (["output=other.pt"], "output=other.pt holds a checkpoint"),
    (["output=old.en", "align.reverse_checkpoint=old.en", "alignments=x.align"], "is the input align.reverse_chec"),
    (["output=a-folder"], "a-folder: is a folder, not a file to write"),
])
def test_translate_refuses_an_output_that_is_an_input_another_output_or_a_checkpoint(work, outputs, expected):
    before = snapshot(work)
    message = refused(translate, "translate", "checkpoint=best.pt", "input=in.de",
                      *(o.format(name=work.name) for o in outputs))
    assert expected in message
    assert snapshot(work) == before


def test_the_translate_command_line_refuses_to_overwrite_a_checkpoint(work):
    before = snapshot(work)
    refused_in_one_line(command("translate.py", "checkpoint=best.pt", "input=in.de", "output=best.pt", cwd=work),
                        "error: output=best.pt is the input checkpoint=best.pt")
    assert snapshot(work) == before


def test_align_and_average_refuse_to_overwrite_their_inputs(work):
    before = snapshot(work)
    message = refused(align, "align", "checkpoint=best.pt", "source=in.de", "target=ref.en", "output=hard-link.de")
    assert "output=hard-link.de is the input source=in.de" in message
    assert "is the input checkpoint" in refused(align, "align", "checkpoint=best.pt", "source=in.de",
                                                "target=ref.en", "output=soft-link.pt")
    with pytest.raises(InputError, match="is the checkpoint to average"):
        average_checkpoints(["best.pt", "other.pt"], "soft-link.pt", force=True)
    assert snapshot(work) == before


def test_a_full_disk_or_a_file_size_limit_is_one_line_and_keeps_the_previous_file(work):
    before = snapshot(work)
    message = refused(translate, "translate", "checkpoint=best.pt", "input=in.de", "output=/dev/full")
    assert message.startswith("/dev/full: could not write it (No space left on device)")
    refused_in_one_line(command("translate.py", "checkpoint=best.pt", "input=in.de", "output=old.en",
                                limit_file_size=4, cwd=work), "error: old.en: could not write it (File too large)")
    assert snapshot(work) == before


@pytest.mark.parametrize("override, expected", [
    ("batch_tokens=0", "batch_tokens=0: must be at least 1"),
    ("batch_tokens=-5", "batch_tokens=-5: must be at least 1"),
    ("max_len_a=-1", "max_len_a=-1.0: must be at least 0"),
    ("max_len_b=-100", "max_len_b=-100: must be at least 0"),
    ("length_penalty=-5", "length_penalty=-5.0: must be at least 0"),
    ("beam_size=0", "beam_size=0: must be at least 1"),
    ("nbest=0", "nbest=0: must be at least 1"),
    ("+beam_sise=5", "beam_sise: no such key"),
    ("align.threshold=-0.5", "align.threshold=-0.5: must be at least 0"),
    ("+align.layr=1", "align.layr: no such key"),
])
def test_translate_refuses_a_value_out_of_range_or_an_unknown_key(override, expected):
    with pytest.raises(InputError) as error:
        composed("translate", "checkpoint=x.pt", override)
    assert str(error.value).startswith(expected)


@pytest.mark.parametrize("override, expected", [
    ("trainer.eval_every=0", "trainer.eval_every=0: must be at least 1"),
    ("trainer.max_steps=-1", "trainer.max_steps=-1: must be at least 1"),
    ("optim.lr=0", "optim.lr=0.0: must be more than 0"),
    ("optim.weight_decay=-0.1", "optim.weight_decay=-0.1: must be at least 0"),
    ("model.dropout=1.5", "model.dropout=1.5: must be less than 1"),
    ("trainer.ema_decay=1", "trainer.ema_decay=1.0: must be less than 1"),
    ("trainer.label_smoothing=-0.1", "trainer.label_smoothing=-0.1: must be at least 0"),
    ("trainer.distill_weight=1", "trainer.distill_weight=1.0: must be less than 1"),
    ("trainer.distill_start=-1", "trainer.distill_start=-1: must be at least 0"),
    ("trainer.initial_dropout=1", "trainer.initial_dropout=1.0: must be less than 1"),
    ("trainer.dropout_ramp_steps=-1", "trainer.dropout_ramp_steps=-1: must be at least 0"),
    ("data.batch_tokens=-1", "data.batch_tokens=-1: must be at least 1"),
    ("data.max_len_ratio=0.5", "data.max_len_ratio=0.5: must be at least 1"),
    ("align.weight=-1", "align.weight=-1.0: must be at least 0"),
    ("align.eflomal_runs=0", "align.eflomal_runs=0: must be at least 1"),
    ("+trainer.max_stepz=5", "trainer.max_stepz: no such key"),
])
def test_train_refuses_a_value_out_of_range_or_an_unknown_key(override, expected):
    with pytest.raises(InputError) as error:
        composed("train", override)
    assert str(error.value).startswith(expected)


@pytest.mark.parametrize("config_name, override, expected", [
    ("train", "trainer.max_stepz=5", "trainer.max_stepz: no such key"),  # a new key needs +; a typo has none
    ("train", "trainer.max_steps=abc", "trainer.max_steps: Value 'abc' of type 'str' could not be converted"),
    ("train", "~data.test", "data.test: DataConfig (DictConfig) does not support deletion"),
    ("train", "data=nosuch", "data=nosuch: no such configuration (one of files, hub, multi30k_de_en, multi30k_en_de)"),
    ("train", "trainer.max_steps=[", "trainer.max_steps=[: not an override Hydra can read"),
    ("translate", "beam_sise=5", "beam_sise: no such key"),
    ("align", "layr=1", "layr: no such key"),
])
def test_an_override_hydra_cannot_apply_is_one_line_naming_it(config_name, override, expected):
    with pytest.raises(InputError) as error:
        cli.refuse_bad_overrides(config_name, ["trainer.seed=3" if config_name == "train" else "checkpoint=x.pt",
                                               override])
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)


def test_overrides_hydra_applies_and_sweeps_pass_to_hydra():
    cli.refuse_bad_overrides("train", ["trainer.max_steps=3", "+trainer.max_stepz=5", "hydra.run.dir=somewhere",
                                       "data=multi30k_en_de"])  # the schema refuses the + key later, in one line
    cli.refuse_bad_overrides("train", ["-m", "trainer.seed=1,2", "trainer.max_stepz=5"])  # Hydra composes each run


def test_the_command_lines_refuse_a_bad_value_before_reading_anything(tmp_path):
    # Neither the checkpoint nor the input exists: the setting is refused before either is looked at.
    refused_in_one_line(command("translate.py", f"checkpoint={tmp_path}/none.pt", f"input={tmp_path}/none.de",
                                "batch_tokens=-5"), "error: batch_tokens=-5: must be at least 1")
    refused_in_one_line(command("translate.py", f"input={tmp_path}/none.de"), "error: checkpoint: required")
    done = train_cli("+trainer.max_stepz=5", f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path}/run")
    refused_in_one_line(done, "error: trainer.max_stepz: no such key")
    # Without the +, Hydra itself cannot apply it: still one line, before anything is read.
    done = train_cli("trainer.max_stepz=5", f"data.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={tmp_path}/run")
    refused_in_one_line(done, "error: trainer.max_stepz: no such key")
    refused_in_one_line(command("translate.py", f"checkpoint={tmp_path}/none.pt", "beam_sise=5"),
                        "error: beam_sise: no such key")
    assert not (tmp_path / "cache").exists()  # no corpus read, no SentencePiece trained


def test_a_damaged_checkpoint_is_refused_in_one_line(work):
    flip_a_weight_byte(work / "best.pt")
    refused_in_one_line(command("translate.py", "checkpoint=best.pt", "input=in.de", cwd=work),
                        "error: best.pt: damaged")


def test_a_second_train_py_in_a_run_directory_in_use_is_refused_and_a_killed_holder_leaves_no_lock(small_corpus,
                                                                                                 tmp_path):
    run_dir = tmp_path / "run"
    # A process holding the run directory as train.py does, then killed outright.
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom mt.files import exclusive\n"
                               "with exclusive(sys.argv[1], 'train.py'):\n    print('held', flush=True)\n"
                               "    time.sleep(600)\n", str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = train_cli(*TINY, *corpus_overrides(small_corpus, tmp_path), "trainer.max_steps=2",
                         f"hydra.run.dir={run_dir}")
        refused_in_one_line(done, f"error: {run_dir}: in use by train.py (pid {holder.pid})")
        assert not (run_dir / "checkpoints").exists() and not (tmp_path / "cache").exists()
    finally:
        holder.kill()
        holder.wait()
    with exclusive(run_dir, "the next train.py"):  # free again: the system released the killed one's lock
        with pytest.raises(InputError, match="in use by the next train.py"):
            with exclusive(run_dir, "a third"):
                pass
