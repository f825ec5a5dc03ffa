"""Test set-up: no test may reach the network, and every cache lives in the test's temporary folders."""

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import gzip  # noqa: E402

import pytest  # noqa: E402

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
    return {
        "train": write_pair(folder, "train", multi30k_lines("train", "de", 300), multi30k_lines("train", "en", 300)),
        "dev": write_pair(folder, "dev", multi30k_lines("val", "de", 12), multi30k_lines("val", "en", 12)),
        "test": write_pair(folder, "test", multi30k_lines("test_2016_flickr", "de", 10),
                           multi30k_lines("test_2016_flickr", "en", 10)),
    }
