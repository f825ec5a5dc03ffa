"""scripts/align.py's merge of the model's links with eflomal's (mt/alignment/merged.py): the score of a link on
hand-worked numbers, its two ends (the model alone, eflomal alone), and the command as a user runs it."""

import logging
import os
import subprocess
import sys
from collections import Counter

import pytest
import torch
from conftest import ROOT
from test_alignment_head import needs_eflomal

from mt.alignment.links import threshold_links
from mt.alignment.merged import EflomalUse, MergeSettings, eflomal_corpus, merged_links
from mt.files import InputError
from mt.translator import load_model

GOLD = ROOT / "tests" / "data" / "alignment"


def test_a_link_scores_the_models_weight_and_the_share_of_eflomal_runs_on_a_hand_worked_pair():
    matrix = torch.tensor([[0.7, 0.2, 0.1],  # target word 0 over source words 0, 1, 2
                           [0.1, 0.45, 0.45]], dtype=torch.float64)
    counts = Counter({(0, 0): 4, (2, 1): 2, (1, 1): 1, (5, 0): 4})  # (5, 0): a source word the model does not have
    # 0.5 * model + 0.5 * runs/4: (0,0) 0.85; (1,1) 0.225 + 0.125 = 0.35; (2,1) 0.225 + 0.25 = 0.475; others <= 0.1
    assert merged_links([(matrix, None)], [counts], 4, 0.5, 0.5) == [{(0, 0)}]
    assert merged_links([(matrix, None)], [counts], 4, 0.5, 0.3) == [{(0, 0), (1, 1), (2, 1)}]
    # The head sends 90% of target word 1 to the source's end: its row counts a tenth, (2,1) 0.0225 + 0.25 = 0.2725,
    # (1,1) 0.0225 + 0.125 = 0.1475; target word 0's 20% leave (0,0) 0.28 + 0.5 and (1,0) at 0.08.
    null = torch.tensor([0.2, 0.9], dtype=torch.float64)
    assert merged_links([(matrix, null)], [counts], 4, 0.5, 0.2) == [{(0, 0), (2, 1)}]
    assert merged_links([(matrix, null)], [counts], 4, 0.5, 0.14) == [{(0, 0), (2, 1), (1, 1)}]
    assert merged_links([(matrix, None)], [counts], 4, 0.5, 0.09) == [{(0, 0), (1, 0), (1, 1), (2, 1)}]
    assert merged_links([None], [Counter()], 4, 0.5, 0.5) == [set()]  # a pair with an empty side


@pytest.mark.parametrize("seed", range(3))
def test_its_ends_are_the_models_threshold_links_and_eflomals_vote(seed):
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.rand(7, 5, generator=generator, dtype=torch.float64)
    matrix = matrix / matrix.sum(dim=1, keepdim=True)
    counts = Counter({(int(i), int(j)): int(c) for i, j, c in zip(torch.randint(0, 5, (12,), generator=generator),
                                                                  torch.randint(0, 7, (12,), generator=generator),
                                                                  torch.randint(1, 5, (12,), generator=generator))})
    for threshold in (0.2, 0.35, 0.5):
        assert merged_links([(matrix, None)], [counts], 4, 1.0, threshold) == [set(threshold_links(matrix, threshold))]
        assert merged_links([(matrix, None)], [counts], 4, 0.0, threshold) == [
            {link for link, count in counts.items() if count / 4 >= threshold}]


def test_auto_falls_back_to_the_model_with_one_warning_and_merge_refuses_in_one_line(caplog):
    about = {"config": {"data": {"train": "nowhere/train", "src_lang": "de", "tgt_lang": "en"}}}
    with caplog.at_level(logging.WARNING):
        assert eflomal_corpus(MergeSettings(), about, None, from_trained_head=True) is None
    assert len(caplog.records) == 1 and "nowhere/train.{de,en} is not here" in caplog.records[0].getMessage()
    with pytest.raises(InputError, match=r"eflomal=merge: .*nowhere/train\.\{de,en\} is not here"):
        eflomal_corpus(MergeSettings(eflomal=EflomalUse.merge), about, None, from_trained_head=True)
    # Links asked for in another way (here: attention rather than the trained head) are read as asked, silently.
    caplog.clear()
    assert eflomal_corpus(MergeSettings(), about, None, from_trained_head=False) is None and not caplog.records
    assert eflomal_corpus(MergeSettings(eflomal=EflomalUse.off), about, None, from_trained_head=True) is None


def align(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "align.py"), *map(str, args)], cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)


@pytest.fixture
def gold_pairs(tmp_path):
    """Gold dev pairs short enough for the tiny model's 64 positions."""
    pairs = [(s, t) for s, t in zip((GOLD / "dev.de").read_text().splitlines(),
                                    (GOLD / "dev.en").read_text().splitlines()) if max(len(s), len(t)) < 90]
    (tmp_path / "s.de").write_text("".join(s + "\n" for s, _ in pairs))
    (tmp_path / "s.en").write_text("".join(t + "\n" for _, t in pairs))
    return [f"source={tmp_path}/s.de", f"target={tmp_path}/s.en"], pairs


@needs_eflomal
def test_align_py_merges_with_eflomal_on_the_training_data_by_default(trained, gold_pairs):
    files, pairs = gold_pairs
    checkpoint = f"checkpoint={trained}/checkpoints/best.pt"
    done = align(checkpoint, *files, "eflomal_runs=1")
    assert done.returncode == 0, done.stderr[-2000:]
    # the corpus the checkpoint was trained on (under pytest-xdist, another worker's copy of the small corpus)
    corpus = load_model(f"{trained}/checkpoints/best.pt", torch.device("cpu")).about["config"]["data"]["train"]
    assert (f"aligning the {len(pairs)} given pairs with {corpus} (300 pairs), 1 run(s) on words and 1 "
            "on pieces") in done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(pairs) and all(lines)
    for (source, target), line in zip(pairs, lines):
        assert all(int(i) < len(source.split()) and int(j) < len(target.split())
                   for i, j in (link.split("-") for link in line.split()))
    # With all the weight on the model and a threshold over one half, a link needs more than half of its target
    # word's attention and less than half of it on the source's end: one of the model's own (argmax, NULL) links.
    model_only = align(checkpoint, *files, "eflomal_runs=1", "merge_weight=1", "merge_threshold=0.51")
    own = align(checkpoint, *files, "eflomal=off")
    assert model_only.returncode == own.returncode == 0, model_only.stderr[-2000:] + own.stderr[-2000:]
    assert "eflomal: aligning" in model_only.stderr and "eflomal" not in own.stderr
    merged, alone = links_of(model_only.stdout), links_of(own.stdout)
    assert all(m <= a for m, a in zip(merged, alone, strict=True))
    assert any(merged)  # the tiny model is unsure: few of its links reach one half, but some do


def links_of(text: str) -> list[set[tuple[int, int]]]:
    return [{tuple(map(int, link.split("-"))) for link in line.split()} for line in text.splitlines()]


@needs_eflomal
@pytest.mark.parametrize("problem", ["corpus", "direction", "output"])
def test_a_merge_that_cannot_run_is_one_line_and_the_corpus_is_never_overwritten(trained, gold_pairs, tmp_path,
                                                                                  problem):
    files, _ = gold_pairs
    for lang in ("de", "en"):
        (tmp_path / f"corpus.{lang}").write_text("Ein Hund .\n" if lang == "de" else "A dog .\n")
    extra = {"corpus": [f"eflomal_corpus={tmp_path}/missing"],
             "direction": ["eflomal=merge", "direction=reverse", f"reverse_checkpoint={trained}/checkpoints/best.pt"],
             "output": [f"eflomal_corpus={tmp_path}/corpus", f"output={tmp_path}/corpus.en"]}
    done = align(f"checkpoint={trained}/checkpoints/best.pt", *files, *extra[problem])
    assert done.returncode == 2
    expected = {"corpus": f"{tmp_path}/missing.de does not exist", "direction": "eflomal=merge: direction=reverse",
                "output": "is the input eflomal_corpus (en)"}[problem]
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert (tmp_path / "corpus.en").read_text() == "A dog .\n"
