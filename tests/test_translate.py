"""translate.py end to end on checkpoints trained here: line counts, n-best, alignments, dumps, bad input."""

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, multi30k_lines
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def translate_cli(*overrides, stdin=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "translate.py"), *overrides], input=stdin, env=env,
                          capture_output=True, timeout=600)


def test_every_input_line_gets_one_output_and_one_alignment_line(trained, tmp_path):
    lines = multi30k_lines("test_2016_flickr", "de", 6)
    lines[1] = ""
    lines[3] = " ".join(["Hund"] * 80)  # over the model's 63-subword limit
    lines.append("   ")
    (tmp_path / "in.de").write_text("\n".join(lines) + "\n", encoding="utf-8")
    result = translate_cli(f"checkpoint={trained}/checkpoints/best.pt", f"input={tmp_path}/in.de",
                           f"output={tmp_path}/out.en", f"alignments={tmp_path}/out.align",
                           f"attention_dump={tmp_path}/dump.jsonl", f"tensorboard={tmp_path}/tb", "beam_size=3")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    stderr = result.stderr.decode()
    assert stderr.count("longer than 63 subwords") == 1 and "first: line 4" in stderr

    outputs = (tmp_path / "out.en").read_text(encoding="utf-8").split("\n")[:-1]
    links = (tmp_path / "out.align").read_text().split("\n")[:-1]
    dump = [json.loads(line) for line in (tmp_path / "dump.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(outputs) == len(links) == len(dump) == len(lines)
    for number, (source, output, line) in enumerate(zip(lines, outputs, links)):
        if not source.strip():
            assert output == "" and line == "" and dump[number]["attention"] == []
            continue
        assert output.strip()
        pairs = [tuple(map(int, link.split("-"))) for link in line.split()]
        assert len(pairs) == len(output.split())  # one link per target word
        n_src = min(len(source.split()), 63) if number == 3 else len(source.split())
        assert all(0 <= i < n_src and 0 <= j < len(output.split()) for i, j in pairs)
        entry = dump[number]
        assert len(entry["attention"]) == len(entry["target_tokens"])
        assert all(len(row) == len(entry["source_tokens"]) for row in entry["attention"])
        assert all(abs(sum(row) - 1) < 1e-2 for row in entry["attention"])  # one head's softmax, in bf16

    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert {"attention/line_0", "attention/line_2"} <= set(events.Tags()["images"])


def test_nbest_lists_cover_every_line_best_first(trained):
    source = "Ein Hund läuft.\n\nZwei Männer spielen.\n".encode()
    result = translate_cli(f"checkpoint={trained}/checkpoints/best.pt", "beam_size=4", "nbest=3", stdin=source)
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    entries = [line.split(" ||| ") for line in result.stdout.decode().splitlines()]
    assert [int(e[0]) for e in entries] == [0, 0, 0, 1, 2, 2, 2]
    for line in (0, 2):
        scores = [float(e[2]) for e in entries if int(e[0]) == line]
        assert scores == sorted(scores, reverse=True)


def test_greedy_translation_reproduces_the_test_scores_training_reported(trained, small_corpus, tmp_path):
    results = json.loads((trained / "results.json").read_text())
    result = translate_cli(f"checkpoint={trained}/checkpoints/best.pt", f"input={small_corpus['test']}.de",
                           f"output={tmp_path}/out.en", f"reference={small_corpus['test']}.en", "beam_size=1")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    expected = results["test"]["t"]
    line = result.stderr.decode().strip().splitlines()[-1]
    assert f"BLEU {expected['bleu']:.2f} ({expected['bleu_signature']})" in line
    assert f"chrF {expected['chrf']:.2f} ({expected['chrf_signature']})" in line


@pytest.mark.parametrize("problem", ["not_utf8", "overwrite", "bad_checkpoint", "bad_layer"])
def test_bad_input_stops_with_one_line(trained, tmp_path, problem):
    (tmp_path / "in.de").write_bytes(b"Ein Hund.\nZwei \xff Katzen.\n" if problem == "not_utf8" else b"Ein Hund.\n")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    checkpoint = tmp_path / "junk.pt" if problem == "bad_checkpoint" else f"{trained}/checkpoints/best.pt"
    overrides = [f"checkpoint={checkpoint}", f"input={tmp_path}/in.de",
                 f"output={tmp_path}/in.de" if problem == "overwrite" else f"output={tmp_path}/out.en"]
    if problem == "bad_layer":
        overrides += ["align.method=attention", "align.layer=5", f"alignments={tmp_path}/out.align"]
    result = translate_cli(*overrides)
    assert result.returncode == 2
    stderr = result.stderr.decode().strip()
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr
    expected = {"not_utf8": f"{tmp_path}/in.de:2: not UTF-8", "overwrite": "it would be overwritten",
                "bad_checkpoint": "junk.pt: not a readable checkpoint",
                "bad_layer": "decoder layer 5 does not exist"}[problem]
    assert expected in stderr
    assert (tmp_path / "in.de").read_bytes().startswith(b"Ein Hund.")


def test_a_model_trained_to_copy_aligns_each_word_to_itself(copy_model, tmp_path):
    run_dir, test = copy_model
    (tmp_path / "test.de").write_text("\n".join(test) + "\n")
    result = translate_cli(f"checkpoint={run_dir}/checkpoints/best.pt", f"input={tmp_path}/test.de",
                           f"output={tmp_path}/out", f"alignments={tmp_path}/out.align", "align.method=attention",
                           "align.layer=-1", "align.shift=false")
    assert result.returncode == 0, result.stderr.decode()[-2000:]
    assert (tmp_path / "out").read_text().splitlines() == test
    diagonal = "\n".join(" ".join(f"{i}-{i}" for i in range(len(s.split()))) for s in test) + "\n"
    assert (tmp_path / "out.align").read_text() == diagonal
