"""scripts/bench_memory.py end to end on a tiny model: the allocators side by side, and the corpus comparison."""

import json
import subprocess
import sys

import pytest
from conftest import ONE_THREAD, ROOT, TINY, shipped_links

from mt.alignment.links import read_pharaoh
from mt.allocator import bundled_mimalloc
from mt.files import read_lines

pytestmark = pytest.mark.slow  # end-to-end runs of train.py and the benchmarks: `-m "not slow"` skips them


def bench_memory(*args):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "bench_memory.py"), *map(str, args)],
                          capture_output=True, text=True, env=ONE_THREAD, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_allocators_side_by_side_each_served_by_its_own(small_corpus, tmp_path):
    data = [f"data.train={small_corpus['train']}", f"data.dev={small_corpus['dev']}",
            *(f"align.{key}={value}" for key, value in shipped_links(small_corpus).items())]
    figures = bench_memory("allocators", "--steps", 4, "--reps", 1, "--workdir", tmp_path, *TINY, *data)
    table = figures["allocators"]
    assert table["glibc"]["served_by"] == ["glibc"]
    if bundled_mimalloc() is not None:
        assert table["mimalloc (train.py's own)"]["served_by"] == ["mimalloc"]
    for name, row in table.items():
        assert row["peak_rss_mb"] >= row["memory_mb_last_log"] > 0, name
        assert row["train_target_tokens_per_s"] > 0, name
    reference = "tcmalloc" if "tcmalloc" in table else "glibc"
    ours = table["mimalloc (train.py's own)"]["train_target_tokens_per_s"]
    assert figures[f"speed_vs_{reference}"] == round(ours / table[reference]["train_target_tokens_per_s"], 3)


def test_a_synthetic_corpus_against_multi30k(small_corpus, tmp_path):
    shipped_corpus = [setting for setting in TINY if setting != "data=files"]
    figures = bench_memory("corpus", "--pairs", 500, "--steps", 2, "--workdir", tmp_path, *shipped_corpus,
                           f"data.dev={small_corpus['dev']}")
    assert figures["multi30k"]["pairs"] == 29000 and figures["synthetic"]["pairs"] == 500
    # Each synthetic pair joins two shipped pairs; its links are theirs, the second's moved past the first's words
    def read(folder, prefix):
        return [list(read_lines(folder / f"{prefix}.{suffix}.gz")) for suffix in ("de", "en", "de-en.align")]

    def joined_links(first, second):
        src_offset, tgt_offset = len(first[0].split()), len(first[1].split())
        return read_pharaoh(shipped[first])[1] | {(i + src_offset, j + tgt_offset)
                                                  for i, j in read_pharaoh(shipped[second])[1]}

    def halves(line):
        return [(line[:k], line[k + 1:]) for k, char in enumerate(line) if char == " "]

    shipped = {(de, en): links for de, en, links in zip(*read(ROOT / "data" / "multi30k", "train"))}
    for de, en, links in zip(*read(tmp_path / "corpus", "train500")):
        joins = [((de1, en1), (de2, en2)) for de1, de2 in halves(de) for en1, en2 in halves(en)
                 if (de1, en1) in shipped and (de2, en2) in shipped]
        assert any(read_pharaoh(links)[1] == joined_links(first, second) for first, second in joins), (de, links)
    for run in ("multi30k", "synthetic"):
        assert figures[run]["sentencepiece_s"] is not None and figures[run]["ready_to_train_s"] > 0
    assert not list(tmp_path.glob("run_*/checkpoints/.*.partial"))
