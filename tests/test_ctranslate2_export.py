"""scripts/export_ctranslate2.py: the exported model decodes as translate.py does, token for token."""

import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import ROOT, multi30k_lines

from mt import ctranslate2_export
from mt.checkpoint import load_checkpoint, model_payload, save_checkpoint
from mt.files import InputError
from mt.model import ModelConfig, Transformer
from mt.tokenizer import BOS_ID, EOS_ID
from mt.translator import SearchSettings, Translator, load_model

try:
    import ctranslate2
except ImportError:  # the deploy extra; `make` installs it
    ctranslate2 = None
needs_ctranslate2 = pytest.mark.skipif(ctranslate2 is None, reason="ctranslate2 is not installed")


def export_cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "export_ctranslate2.py"), *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=600)


def ct2_greedy(model_dir, pieces: list[list[str]], max_positions: int) -> list[list[str]]:
    """Greedy decoding within our limits: a source of max_positions tokens with EOS, and an output of
    floor(1.5 * source tokens with EOS + 10) tokens with EOS, at most max_positions - 1 (CTranslate2 counts without)."""
    translator = ctranslate2.Translator(str(model_dir), device="cpu", intra_threads=1)
    outputs = []
    for source in pieces:  # one at a time: CTranslate2's length limit is per batch, ours per sentence
        source_len = min(len(source) + 1, max_positions)
        limit = min(math.floor(1.5 * source_len + 10), max_positions - 1) - 1
        result = translator.translate_batch([source], beam_size=1, max_input_length=max_positions,
                                            max_decoding_length=limit,
                                            suppress_sequences=[["<pad>"], ["<s>"]])  # as our search does
        outputs.append(result[0].hypotheses[0])
    return outputs


@needs_ctranslate2
@pytest.mark.parametrize("run", ["trained", "copy_model"])
def test_greedy_output_equals_translate_token_for_token(request, tmp_path, run):
    # The briefly trained model repeats itself to the length limit; the copy model ends its outputs itself.
    run_dir, copy_sentences = (request.getfixturevalue(run), []) if run == "trained" else request.getfixturevalue(run)
    checkpoint = run_dir / "checkpoints" / "best.pt"
    result = export_cli(checkpoint, tmp_path / "ct2")
    assert result.returncode == 0, result.stderr[-2000:]
    assert {"model.bin", "config.json", "shared_vocabulary.json", "spm.model"} <= {
        p.name for p in (tmp_path / "ct2").iterdir()}
    assert (tmp_path / "ct2" / "spm.model").read_bytes() == load_checkpoint(checkpoint)["spm_model"]

    lines = multi30k_lines("test_2016_flickr", "de", 20) + multi30k_lines("val", "de", 20) + copy_sentences
    loaded = load_model(str(checkpoint), torch.device("cpu"))
    model, tokenizer = loaded.model, loaded.tokenizer
    ours = Translator(model, tokenizer, SearchSettings(beam_size=1), torch.device("cpu"), precision="fp32")
    expected = [tokenizer.pieces(hyps[0].tokens) for hyps in ours.translate(lines)]
    source_pieces = [tokenizer.pieces(ids) for ids in tokenizer.encode(lines)]
    assert ct2_greedy(tmp_path / "ct2", source_pieces, model.cfg.max_positions) == expected


def _random_checkpoint(path, tokenizer, pre_norm: bool, tie_embeddings: bool, fix_norm: bool = False) -> Transformer:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_heads=4, encoder_layers=2, decoder_layers=3,
                      ffn_dim=48, pre_norm=pre_norm, tie_embeddings=tie_embeddings, fix_norm=fix_norm,
                      max_positions=128)
    model = Transformer(cfg).eval()
    with torch.no_grad():  # fresh LayerNorms are the identity and fresh word vectors near length 1; make both count
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
            if "embed" in name or name == "output.weight":
                p.mul_(torch.rand(p.size(0), 1) * 3 + 0.5)
    save_checkpoint(path, model_payload(model, tokenizer))
    return model


@needs_ctranslate2
@pytest.mark.parametrize("pre_norm, tie_embeddings, fix_norm", [
    (True, True, False), (True, False, True), (False, True, True), (False, False, False)])
def test_every_layout_scores_the_same_log_probabilities(trained, tmp_path, pre_norm, tie_embeddings, fix_norm):
    """Teacher-forced log-probabilities of the export equal ours for pre-/post-norm, tied and untied models, with
    and without FixNorm (written out as unit-length word vectors)."""
    tokenizer = load_model(str(trained / "checkpoints" / "best.pt"), torch.device("cpu")).tokenizer
    model = _random_checkpoint(tmp_path / "random.pt", tokenizer, pre_norm, tie_embeddings, fix_norm)
    ctranslate2_export.export_ctranslate2(tmp_path / "random.pt", tmp_path / "ct2")

    sources = tokenizer.encode(multi30k_lines("val", "de", 4))
    targets = tokenizer.encode(multi30k_lines("val", "en", 4))
    scored = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu", intra_threads=1).score_batch(
        [tokenizer.pieces(s) for s in sources], [tokenizer.pieces(t) for t in targets])
    for source, target, theirs in zip(sources, targets, scored):
        src = torch.tensor([source + [EOS_ID]])
        tgt_in, tgt_out = torch.tensor([[BOS_ID] + target]), torch.tensor(target + [EOS_ID])
        with torch.no_grad():
            log_probs = model(src, tgt_in).logits[0].log_softmax(-1).gather(1, tgt_out[:, None]).squeeze(1)
        assert theirs.tokens == tokenizer.pieces(target) + ["</s>"]
        assert torch.allclose(torch.tensor(theirs.log_probs), log_probs, atol=1e-4)


@needs_ctranslate2
def test_int8_export_translates(trained, tmp_path):
    result = export_cli(trained / "checkpoints" / "best.pt", tmp_path / "int8", "--quantization", "int8")
    assert result.returncode == 0, result.stderr[-2000:]
    (output,) = ct2_greedy(tmp_path / "int8", [["▁Ein", "▁Hund", "."]], 64)
    assert output and "<pad>" not in output and "<s>" not in output


@needs_ctranslate2
@pytest.mark.parametrize("problem", ["missing_checkpoint", "bad_checkpoint", "existing_output", "not_a_model_dir"])
def test_bad_input_stops_with_one_line(trained, tmp_path, problem):
    (tmp_path / "junk.pt").write_bytes(b"junk")
    (tmp_path / "earlier").mkdir()
    (tmp_path / "earlier" / "model.bin").write_bytes(b"")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "keep.txt").write_text("mine")
    checkpoint = {"missing_checkpoint": tmp_path / "nope.pt", "bad_checkpoint": tmp_path / "junk.pt"}.get(
        problem, trained / "checkpoints" / "best.pt")
    out_dir = {"existing_output": tmp_path / "earlier", "not_a_model_dir": tmp_path / "notes"}.get(
        problem, tmp_path / "o")
    result = export_cli(checkpoint, out_dir, *(["--force"] if problem == "not_a_model_dir" else []))
    assert result.returncode == 2
    stderr = result.stderr.strip()
    assert len(stderr.splitlines()) == 1 and "Traceback" not in stderr and stderr.startswith("error: ")
    assert {"missing_checkpoint": "nope.pt: no such checkpoint", "bad_checkpoint": "junk.pt: not a readable checkpoint",
            "existing_output": "pass --force to replace it",
            "not_a_model_dir": "is not a CTranslate2 model"}[problem] in stderr
    assert (tmp_path / "notes" / "keep.txt").read_text() == "mine" and not (tmp_path / "o").exists()


@needs_ctranslate2
def test_a_model_beyond_layer_norm_is_refused_in_one_line(trained, tmp_path):
    tokenizer = load_model(str(trained / "checkpoints" / "best.pt"), torch.device("cpu")).tokenizer
    cfg = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=32, n_heads=4, encoder_layers=1, decoder_layers=1,
                      ffn_dim=48, norm="scale")
    save_checkpoint(tmp_path / "model.pt", model_payload(Transformer(cfg), tokenizer))
    result = export_cli(tmp_path / "model.pt", tmp_path / "ct2")
    stderr = result.stderr.strip()
    assert result.returncode == 2 and len(stderr.splitlines()) == 1 and "Traceback" not in stderr
    assert stderr.startswith("error: ") and "model.norm=scale" in stderr and "LayerNorm" in stderr
    assert not (tmp_path / "ct2").exists()


@needs_ctranslate2
def test_force_replaces_an_earlier_export(trained, tmp_path):
    checkpoint = trained / "checkpoints" / "best.pt"
    assert export_cli(checkpoint, tmp_path / "ct2").returncode == 0
    float32 = (tmp_path / "ct2" / "model.bin").stat().st_size
    again = export_cli(checkpoint, tmp_path / "ct2", "--quantization", "int8")
    assert again.returncode == 2 and "pass --force" in again.stderr
    assert (tmp_path / "ct2" / "model.bin").stat().st_size == float32  # refused: untouched
    forced = export_cli(checkpoint, tmp_path / "ct2", "--quantization", "int8", "--force")
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert (tmp_path / "ct2" / "model.bin").stat().st_size < float32 / 2  # replaced by the int8 export
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct2"]  # no staging folder left


def test_without_ctranslate2_the_error_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # import ctranslate2 now raises ImportError
    with pytest.raises(InputError, match=r"pip install '\.\[deploy\]'"):
        ctranslate2_export.export_ctranslate2(tmp_path / "any.pt", tmp_path / "out")
