"""Test set-up: no test may reach the network, and every cache lives in the test's temporary folders."""

import gzip
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from filelock import FileLock

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs one worker per core: each worker, and every command it launches, keeps to one thread, since
    # processes that each spread over all the cores slow one another several times over.
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parent.parent

MULTI30K = ROOT / "data" / "multi30k"


def multi30k_lines(split: str, lang: str, count: int) -> list[str]:
    with gzip.open(MULTI30K / f"{split}.{lang}.gz", "rt", encoding="utf-8") as f:
        return [next(f).rstrip("\n") for _ in range(count)]


def write_pair(folder: Path, name: str, src: list[str], tgt: list[str]) -> str:
    """Write NAME.de / NAME.en and return the prefix NAME."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.de").write_text("".join(line + "\n" for line in src), encoding="utf-8")
    (folder / f"{name}.en").write_text("".join(line + "\n" for line in tgt), encoding="utf-8")
    return str(folder / name)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> dict[str, str]:
    """Real Multi30k de-en, cut small: 300 training pairs, 12 dev pairs, 10 test pairs."""
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "train.de-en.align").write_text("".join(line + "\n" for line in multi30k_lines("train", "de-en.align",
                                                                                             300)))
    return {
        "links": str(folder / "train.de-en.align"),  # the shipped links of these pairs
        "train": write_pair(folder, "train", multi30k_lines("train", "de", 300), multi30k_lines("train", "en", 300)),
        "dev": write_pair(folder, "dev", multi30k_lines("val", "de", 12), multi30k_lines("val", "en", 12)),
        "test": write_pair(folder, "test", multi30k_lines("test_2016_flickr", "de", 10),
                           multi30k_lines("test_2016_flickr", "en", 10)),
    }


# ---------------------------------------------------------------- train.py as a user runs it

# One eflomal run for the head's links (the default votes over 8): runs on a tiny corpus take eflomal longest, and
# tests/test_alignment_head.py checks the vote.
ONE_EFLOMAL_RUN = {"eflomal_runs": 1, "eflomal_votes": 1}
TINY = ["model=tiny", "data=files", "data.tokenizer.vocab_size=300", "data.batch_tokens=600",
        "trainer.log_every=4", "trainer.progress=false",
        "trainer.heatmap_sentences=0",  # drawing them takes most of a tiny run: test_training.py draws them
        *(f"align.{key}={value}" for key, value in ONE_EFLOMAL_RUN.items())]
ONE_THREAD = {**os.environ, "OMP_NUM_THREADS": "1"}  # also makes runs in different processes bit-comparable


def composed(config_name, *overrides):
    """A command's configuration as Hydra composes it from mt/configs and our schema types and checks it (exactly
    what the command line gets), in this process."""
    from hydra import compose, initialize_config_module

    from mt import cli, config

    config.register()
    with initialize_config_module("mt.configs", version_base="1.3"):
        return cli.typed(compose(config_name, overrides=list(overrides)))


def train_cli(*overrides, cwd=ROOT, env=None, **popen):
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], cwd=cwd, env=env or ONE_THREAD,
                          capture_output=True, text=True, timeout=600, **popen)


def shipped_links(corpus) -> dict:
    """The alignment head's settings that train it on the corpus's shipped links: eflomal, which would align the
    pairs afresh, takes longer than the rest of a tiny run (tests/test_alignment_head.py runs it)."""
    return {"links": "file", "links_file": corpus["links"]}


def corpus_overrides(corpus, tmp_path):
    return [f"data.train={corpus['train']}", f"data.dev={corpus['dev']}", f"+data.test.flickr={corpus['test']}",
            f"data.cache_dir={tmp_path / 'cache'}",
            *(f"align.{key}={value}" for key, value in shipped_links(corpus).items())]


# ---------------------------------------------------------------- trained models, shared by the tests that need one

def _train(cfg, run_dir: Path) -> None:
    from mt.commands.train import run

    run(cfg, run_dir)


def built_once(tmp_path_factory, name: str, build) -> Path:
    """A folder that `build` fills, once per test session: under pytest-xdist the first worker to ask builds it
    and the others wait for it and read it, since each model takes a worker tens of seconds to train."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        folder = tmp_path_factory.mktemp(name)
        build(folder)
        return folder
    session = tmp_path_factory.getbasetemp().parent  # this session's folder, above each worker's own
    folder, built = session / name, session / f"{name}.built"
    with FileLock(str(session / f"{name}.lock")):
        if not built.exists():
            shutil.rmtree(folder, ignore_errors=True)  # what a failed build on another worker left
            folder.mkdir()
            build(folder)
            built.touch()
    return folder


@pytest.fixture(scope="session")
def trained(small_corpus, tmp_path_factory):
    """A tiny model trained briefly on 300 Multi30k pairs: its run directory."""
    from mt.alignment.head import AlignmentTrainingConfig
    from mt.config import OptimConfig, TrainConfig, TrainerConfig
    from mt.data import DataConfig
    from mt.model import ModelConfig
    from mt.tokenizer import TokenizerConfig

    def build(run_dir: Path) -> None:
        _train(TrainConfig(
            data=DataConfig(train=small_corpus["train"], dev=small_corpus["dev"], test={"t": small_corpus["test"]},
                            cache_dir=f"{run_dir}/cache", batch_tokens=1500, tokenizer=TokenizerConfig(vocab_size=300)),
            model=ModelConfig(vocab_size=0, d_model=64, n_heads=2, encoder_layers=2, decoder_layers=2, ffn_dim=128,
                              max_positions=64),
            optim=OptimConfig(lr=3e-3, warmup_steps=20),
            trainer=TrainerConfig(max_steps=60, eval_every=60, progress=False, heatmap_sentences=0),
            align=AlignmentTrainingConfig(**shipped_links(small_corpus)),
        ), run_dir)

    return built_once(tmp_path_factory, "run", build)


COPY_WORDS = "Hund Katze Haus Baum Auto Ball Mann Frau Kind Wasser Stadt Berg Boot Hut".split()


def copy_sentences(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.sample(COPY_WORDS, rng.randint(3, 7))) for _ in range(count)]  # distinct: one right link


def copy_config(folder: Path, max_steps: int, **trainer):
    """A tiny model that learns to copy sentences of distinct words (600 of them, written into `folder`)."""
    from mt.alignment.head import AlignmentTrainingConfig
    from mt.config import OptimConfig, TrainConfig, TrainerConfig
    from mt.data import DataConfig
    from mt.model import ModelConfig
    from mt.tokenizer import TokenizerConfig

    train = copy_sentences(600, seed=0)
    prefix = write_pair(folder / "data", "train", train, train)
    return TrainConfig(
        data=DataConfig(train=prefix, dev=prefix, cache_dir=f"{folder}/cache", batch_tokens=800,
                        tokenizer=TokenizerConfig(vocab_size=60)),  # every word one piece
        model=ModelConfig(vocab_size=0, d_model=64, n_heads=2, encoder_layers=2, decoder_layers=2, ffn_dim=128,
                          dropout=0.0),
        optim=OptimConfig(lr=3e-3, warmup_steps=50),
        trainer=TrainerConfig(**{"max_steps": max_steps, "eval_every": max_steps, "label_smoothing": 0.0,
                                 "progress": False, "heatmap_sentences": 0, **trainer}),
        # No alignment head: its links would come from eflomal, which seeds itself, so the model would change
        # from run to run.
        align=AlignmentTrainingConfig(weight=0.0),
    )


@pytest.fixture(scope="session")
def copy_model(tmp_path_factory):
    """A tiny model trained to copy sentences of distinct words: its run directory and 20 unseen sentences."""
    run_dir = built_once(tmp_path_factory, "copy", lambda folder: _train(copy_config(folder, 600), folder))
    return run_dir, copy_sentences(20, seed=1)
