"""scripts/align.py: forced alignment of given pairs, symmetrization, and the shipped gold example."""

import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT
from mt.align import SYMMETRIZE, diagonal_links

GOLD = ROOT / "tests" / "data"


def cli(script, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], env=env, capture_output=True,
                          text=True, timeout=600)


def test_forced_alignment_of_the_models_own_output_equals_translate_py_alignment(trained, tmp_path):
    checkpoint = trained / "checkpoints" / "best.pt"
    done = cli("translate.py", f"checkpoint={checkpoint}", f"input={GOLD}/gold.de", f"output={tmp_path}/out.en",
               f"alignments={tmp_path}/translate.align", "beam_size=3")
    assert done.returncode == 0, done.stderr[-2000:]
    done = cli("scripts/align.py", f"checkpoint={checkpoint}", f"source={GOLD}/gold.de", f"target={tmp_path}/out.en",
               f"output={tmp_path}/forced.align")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "forced.align").read_text() == (tmp_path / "translate.align").read_text()
    assert len((tmp_path / "forced.align").read_text().splitlines()) == 13


def test_a_copy_model_aligns_a_copy_pair_diagonally(copy_model, tmp_path):
    run_dir, sentences = copy_model
    (tmp_path / "pairs.de").write_text("\n".join(sentences) + "\n")
    done = cli("scripts/align.py", f"checkpoint={run_dir}/checkpoints/best.pt", f"source={tmp_path}/pairs.de",
               f"target={tmp_path}/pairs.de", f"output={tmp_path}/out.align", "layer=-1")
    assert done.returncode == 0, done.stderr[-2000:]
    diagonal = ["".join(" ".join(f"{i}-{i}" for i in range(len(s.split())))) for s in sentences]
    assert (tmp_path / "out.align").read_text().splitlines() == diagonal


def test_symmetrization_rules_on_a_hand_worked_example():
    forward = {(0, 0), (1, 1), (2, 2), (0, 2), (3, 4)}
    reverse = {(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)}
    assert SYMMETRIZE["intersection"](forward, reverse) == {(0, 0), (1, 1), (2, 2)}
    assert SYMMETRIZE["union"](forward, reverse) == forward | reverse
    # grow: (3,3) touches (2,2) diagonally and aligns source 3; then (3,4) and (4,4) grow from (3,3).
    # (0,2) never enters: source 0 and target 2 are both aligned already.
    assert SYMMETRIZE["grow-diag-final"](forward, reverse) == {(0, 0), (1, 1), (2, 2), (3, 3), (3, 4), (4, 4)}
    # final: a forward-only link to an unaligned word is added even far from the others
    assert SYMMETRIZE["grow-diag-final"]({(0, 0), (5, 5)}, {(0, 0)}) == {(0, 0), (5, 5)}


def test_both_directions_symmetrize_and_line_counts_always_match(trained, tmp_path):
    (tmp_path / "s.de").write_text("Ein Hund läuft .\n\nZwei Männer .\nEin Kind\n")
    (tmp_path / "s.en").write_text("A dog runs .\nA cat .\n\nA child\n")
    checkpoint = trained / "checkpoints" / "best.pt"  # de->en; its reverse here is itself, read en->de
    outputs = {}
    for direction in ("forward", "reverse", "both"):
        done = cli("scripts/align.py", f"checkpoint={checkpoint}", f"reverse_checkpoint={checkpoint}",
                   f"source={tmp_path}/s.de", f"target={tmp_path}/s.en", f"direction={direction}",
                   f"output={tmp_path}/{direction}.align", "symmetrize=union")
        assert done.returncode == 0, done.stderr[-2000:]
        outputs[direction] = (tmp_path / f"{direction}.align").read_text().split("\n")[:-1]
        assert len(outputs[direction]) == 4
        assert outputs[direction][1] == outputs[direction][2] == ""  # an empty side: an empty line
    for line in range(4):
        links = {tuple(map(int, link.split("-"))) for d in ("forward", "reverse") for link in outputs[d][line].split()}
        assert {tuple(map(int, link.split("-"))) for link in outputs["both"][line].split()} == links


def test_the_gold_example_against_the_diagonal_baseline(tmp_path):
    done = cli("scripts/eval_alignment.py", GOLD / "gold.align", GOLD / "gold.align", "--source", GOLD / "gold.de",
               "--target", GOLD / "gold.en", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["aer"] == 0.0 and result["precision"] == 1.0 and result["recall"] == 1.0
    assert 0.1 < result["diagonal"]["aer"] < 0.5  # mostly monotone captions, but not all
    assert diagonal_links(3, 3) == {(0, 0), (1, 1), (2, 2)}
    assert diagonal_links(2, 4) == {(0, 0), (0, 1), (1, 2), (1, 3)}


@pytest.mark.parametrize("problem", ["direction", "counts"])
def test_align_py_bad_input_is_one_line(trained, tmp_path, problem):
    (tmp_path / "a").write_text("x\ny\n")
    (tmp_path / "b").write_text("x\n" if problem == "counts" else "x\ny\n")
    extra = ["direction=both"] if problem == "direction" else []
    done = cli("scripts/align.py", f"checkpoint={trained}/checkpoints/best.pt", f"source={tmp_path}/a",
               f"target={tmp_path}/b", *extra)
    assert done.returncode == 2
    expected = {"direction": "direction=both needs reverse_checkpoint", "counts": "has 2 lines but"}[problem]
    assert expected in done.stderr and len(done.stderr.strip().splitlines()) == 1
