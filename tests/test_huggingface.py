"""Hugging Face in and out (mt/huggingface.py, scripts/export_hf.py, train.py init.from_hf): transformers runs an
export as translate.py does, a MarianMT model becomes ours with the same log-probabilities, and both round trips
keep the outputs. The MarianMT models are tiny, random and saved locally: nothing is downloaded."""

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import sentencepiece as spm
import torch
from conftest import ONE_THREAD, ROOT, TINY, corpus_overrides, multi30k_lines, train_cli

from mt.checkpoint import model_payload, save_checkpoint
from mt.files import InputError
from mt.model import ModelConfig, Transformer
from mt.translator import SearchSettings, Translator, load_model

transformers = pytest.importorskip("transformers", reason="the hf extra; `make` installs it")
from mt import huggingface  # noqa: E402  (after the skip: it needs transformers)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
LINES = multi30k_lines("test_2016_flickr", "de", 12) + multi30k_lines("val", "de", 12)


def export_cli(*args, env=None):
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "export_hf.py"), *map(str, args)],
                          env=env or ONE_THREAD, capture_output=True, text=True, timeout=600)


def generated(folder, lines: list[str], limits: list[int] | None = None) -> list[str]:
    """transformers' greedy translations of `lines` by the model and tokenizer saved in `folder`, each within
    `limits` (tokens after the decoder's start, EOS included) where given."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    model = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(folder)).eval()
    outputs = []
    for i, line in enumerate(lines):  # one at a time: the length limit is per sentence, as ours
        inputs = tokenizer([line], return_tensors="pt", truncation=True)
        extra = {"max_length": limits[i] + 1} if limits else {}
        with torch.no_grad():
            tokens = model.generate(**inputs, num_beams=1, do_sample=False, **extra)
        outputs.append(tokenizer.decode(tokens[0], skip_special_tokens=True))
    return outputs


def our_limits(loaded, lines: list[str]) -> list[int]:
    """translate.py's output limit per line: floor(1.5 * (source + EOS) + 10), within the positions."""
    settings, cfg = SearchSettings(), loaded.model.cfg
    return [min(int(settings.max_len_a * (len(ids) + 1) + settings.max_len_b), cfg.max_positions - 1)
            for ids in loaded.tokenizer.encode(lines)]


def our_greedy(checkpoint, lines: list[str]) -> list[str]:
    loaded = load_model(str(checkpoint), torch.device("cpu"))
    translator = Translator(loaded.model, loaded.tokenizer, SearchSettings(beam_size=1), torch.device("cpu"), "fp32")
    return translator.best(lines)


# ------------------------------------------------------------------ a tiny MarianMT model, as OPUS-MT ships them

def _sentencepiece(lines: list[str], size: int) -> bytes:
    import io

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, vocab_size=size,
                                   hard_vocab_limit=False, minloglevel=2)  # SentencePiece's own ids
    return model.getvalue()


def save_marian(folder, pre_norm: bool = False, activation: str = "swish", seed: int = 0):
    """A random MarianMT model (Pegasus-style pre-norm with `pre_norm`) with OPUS-MT's files: a German and an
    English SentencePiece model, and one vocab.json of both (</s> 0, <unk> 1, ..., <pad> last)."""
    source = _sentencepiece(multi30k_lines("train", "de", 400), 150)
    target = _sentencepiece(multi30k_lines("train", "en", 400), 150)
    pieces = []
    for model in (source, target):
        processor = spm.SentencePieceProcessor(model_proto=model)
        pieces += [processor.id_to_piece(i) for i in range(3, processor.get_piece_size())]
    vocabulary = ["</s>", "<unk>", *dict.fromkeys(pieces), "<pad>"]
    folder.mkdir(parents=True)
    (folder / "source.spm").write_bytes(source)
    (folder / "target.spm").write_bytes(target)
    (folder / "vocab.json").write_text(json.dumps({p: i for i, p in enumerate(vocabulary)}))
    pad = len(vocabulary) - 1
    kind = transformers.PegasusConfig if pre_norm else transformers.MarianConfig
    config = kind(vocab_size=len(vocabulary), d_model=32, encoder_layers=2, decoder_layers=2,
                  encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
                  max_position_embeddings=96, activation_function=activation, scale_embedding=True,
                  pad_token_id=pad, decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=0)
    torch.manual_seed(seed)
    model_kind = transformers.PegasusForConditionalGeneration if pre_norm else transformers.MarianMTModel
    model = model_kind(config).eval()
    with torch.no_grad():  # fresh norms are the identity and the logits bias zero: make them count
        for name, tensor in model.state_dict().items():
            if "layer_norm" in name or "final_logits_bias" in name:
                tensor.add_(0.3 * torch.randn_like(tensor))
    model.save_pretrained(str(folder))
    tokenizer = transformers.MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"),
                                             str(folder / "vocab.json"), source_lang="de", target_lang="en")
    tokenizer.save_pretrained(str(folder))
    return model


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    folder = tmp_path_factory.mktemp("marian") / "opus-mt-tiny"
    return folder, save_marian(folder)


def their_log_probs(model, tokenizer, sources: list[str], targets: list[str]) -> torch.Tensor:
    inputs = tokenizer(sources, text_target=targets, return_tensors="pt", padding=True)
    labels = inputs.pop("labels")
    decoder_input = torch.cat([torch.full((len(targets), 1), model.config.decoder_start_token_id), labels[:, :-1]], 1)
    decoder_input = decoder_input.masked_fill(decoder_input.eq(-100), model.config.pad_token_id)
    with torch.no_grad():
        logits = model(**inputs, decoder_input_ids=decoder_input).logits
    return logits.log_softmax(-1), inputs["input_ids"], decoder_input


# ------------------------------------------------------------------ export

def test_the_export_generates_translate_outputs_line_for_line(trained, tmp_path):
    checkpoint = trained / "checkpoints" / "best.pt"
    result = export_cli(checkpoint, tmp_path / "hf")
    assert result.returncode == 0, result.stderr[-2000:]
    names = {p.name for p in (tmp_path / "hf").iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "source.spm", "target.spm", "vocab.json",
            "tokenizer_config.json", "README.md"} <= names
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "BLEU" in card and "nrefs:1|case:mixed" in card and "data licence" in card

    loaded = load_model(str(checkpoint), torch.device("cpu"))
    # The briefly trained model repeats itself up to the length limit: the limit is ours, per sentence.
    assert generated(tmp_path / "hf", LINES, our_limits(loaded, LINES)) == our_greedy(checkpoint, LINES)


@pytest.mark.parametrize("pre_norm, activation, scale, bias, fix_norm", [
    (True, "relu", True, False, False), (False, "swish", False, True, True), (True, "gelu", True, True, True)])
def test_exported_log_probabilities_equal_ours_in_float64(pre_norm, activation, scale, bias, fix_norm):
    torch.manual_seed(1)
    cfg = ModelConfig(vocab_size=50, d_model=16, n_heads=4, encoder_layers=2, decoder_layers=3, ffn_dim=24,
                      dropout=0.0, pre_norm=pre_norm, activation=activation, scale_embeddings=scale, output_bias=bias,
                      fix_norm=fix_norm)
    ours = Transformer(cfg).double().eval()
    with torch.no_grad():
        for p in ours.parameters():
            p.add_(0.2 * torch.randn_like(p))
    free_length = ours.src_embed.weight.clone()
    theirs = huggingface.to_transformers(ours)
    src = torch.tensor([[5, 9, 12, 40, 3], [7, 8, 3, 0, 0]])
    tgt = torch.tensor([[2, 11, 13, 17, 19], [2, 21, 23, 0, 0]])
    with torch.no_grad():
        expected = ours(src, tgt).logits.log_softmax(-1)
        got = theirs(input_ids=src, attention_mask=src.ne(0), decoder_input_ids=tgt).logits.log_softmax(-1)
    real = tgt.ne(0)
    assert got.dtype == torch.float64
    assert torch.allclose(got[real], expected[real], atol=1e-10, rtol=0)
    # FixNorm goes out as unit-length word vectors; our model keeps its free-length ones and FixNorm.
    assert ours.cfg.fix_norm == fix_norm and torch.equal(ours.src_embed.weight, free_length)


def test_export_refusals_are_one_line(trained, tmp_path):
    checkpoint = trained / "checkpoints" / "best.pt"
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "mine.txt").write_text("keep me")
    refused = export_cli(checkpoint, tmp_path / "notes")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "not a Hugging Face model" in refused.stderr
    assert (tmp_path / "notes" / "mine.txt").read_text() == "keep me"

    huggingface.export_hf(checkpoint, tmp_path / "hf")
    with pytest.raises(InputError, match="--force"):
        huggingface.export_hf(checkpoint, tmp_path / "hf")
    huggingface.export_hf(checkpoint, tmp_path / "hf", force=True)
    # Offline (as every test is), --push says so in one line, and the export stays.
    with pytest.raises(InputError, match="--push user/model: could not upload"):
        huggingface.export_hf(checkpoint, tmp_path / "hf", force=True, push="user/model")
    assert (tmp_path / "hf" / "model.safetensors").is_file()

    untied = tmp_path / "untied.pt"
    cfg = ModelConfig(vocab_size=300, d_model=16, n_heads=2, encoder_layers=1, decoder_layers=1, ffn_dim=16,
                      tie_embeddings=False)
    tokenizer = load_model(str(checkpoint), torch.device("cpu")).tokenizer
    save_checkpoint(untied, model_payload(Transformer(cfg), tokenizer))
    with pytest.raises(InputError, match="tie_embeddings"):
        huggingface.export_hf(untied, tmp_path / "untied")

    # ScaleNorm has no counterpart in MarianMT: the command says so in one line and writes nothing.
    scaled = tmp_path / "scaled.pt"
    beyond = dataclasses.replace(cfg, tie_embeddings=True, norm="scale", fix_norm=True)
    save_checkpoint(scaled, model_payload(Transformer(beyond), tokenizer))
    refused = export_cli(scaled, tmp_path / "scaled")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and "model.norm=scale" in refused.stderr
    assert not (tmp_path / "scaled").exists()


# ------------------------------------------------------------------ import

@pytest.mark.parametrize("pre_norm, activation", [(False, "swish"), (True, "relu")])
def test_imported_log_probabilities_equal_transformers_in_float64(tmp_path, pre_norm, activation):
    theirs = save_marian(tmp_path / "model", pre_norm, activation, seed=3).double()
    imported = huggingface.from_transformers(str(tmp_path / "model"))
    ours = Transformer(imported.config)
    ours.load_state_dict(imported.weights)
    ours = ours.double().eval()

    sources, targets = multi30k_lines("val", "de", 4), multi30k_lines("val", "en", 4)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "model"))
    expected, src, tgt_in = their_log_probs(theirs, tokenizer, sources, targets)
    # Our tokenizer gives transformers' ids, and our model their log-probabilities.
    for row, (source, target) in enumerate(zip(imported.tokenizer.encode(sources),
                                               imported.tokenizer.encode_target(targets))):
        assert src[row, :len(source) + 1].tolist() == source + [imported.config.eos_id]
        assert tgt_in[row, 1:len(target) + 1].tolist() == target
    with torch.no_grad():
        got = ours(src, tgt_in).logits.log_softmax(-1)
    real = torch.cat([torch.ones(len(targets), 1, dtype=torch.bool), tgt_in[:, 1:].ne(theirs.config.pad_token_id)],
                     1)
    assert torch.allclose(got[real], expected[real], atol=1e-10, rtol=0)


def test_a_marian_model_fine_tunes_translates_and_exports_both_ways(marian, small_corpus, tmp_path):
    folder, theirs = marian
    run = tmp_path / "run"
    result = train_cli(*TINY, *corpus_overrides(small_corpus, tmp_path), f"init.from_hf={folder}",
                       "trainer.max_steps=4", "trainer.eval_every=4", f"hydra.run.dir={run}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "init.from_hf" in (run / "train.log").read_text()
    assert {"source.spm", "target.spm", "vocab.json"} <= {p.name for p in run.iterdir()}
    checkpoint = run / "checkpoints" / "best.pt"
    loaded = load_model(str(checkpoint), torch.device("cpu"))
    assert loaded.model.cfg.d_model == 32 and loaded.model.cfg.activation == "swish"
    assert loaded.alignment_head is not None  # the head trained on the imported model

    lines = LINES[:8]
    translated = subprocess.run([sys.executable, str(ROOT / "translate.py"), f"checkpoint={checkpoint}",
                                 "beam_size=1", "precision=fp32", f"alignments={tmp_path / 'links'}"],
                                input="\n".join(lines) + "\n", env=ONE_THREAD, capture_output=True, text=True,
                                timeout=600)
    assert translated.returncode == 0, translated.stderr[-2000:]
    assert translated.stdout.splitlines() == our_greedy(checkpoint, lines)
    assert len((tmp_path / "links").read_text().splitlines()) == len(lines)
    (tmp_path / "pairs.de").write_text("\n".join(lines[:3]) + "\n")
    (tmp_path / "pairs.en").write_text("\n".join(multi30k_lines("val", "en", 3)) + "\n")
    aligned = subprocess.run([sys.executable, str(ROOT / "scripts" / "align.py"), f"checkpoint={checkpoint}",
                              f"source={tmp_path / 'pairs.de'}", f"target={tmp_path / 'pairs.en'}", "eflomal=off"],
                             env=ONE_THREAD, capture_output=True, text=True, timeout=600)
    assert aligned.returncode == 0, aligned.stderr[-2000:]
    assert len(aligned.stdout.splitlines()) == 3 and all("-" in line for line in aligned.stdout.splitlines())

    huggingface.export_hf(checkpoint, tmp_path / "hf")
    assert generated(tmp_path / "hf", lines, our_limits(loaded, lines)) == our_greedy(checkpoint, lines)
    ctranslate2 = pytest.importorskip("ctranslate2")
    from mt.ctranslate2_export import export_ctranslate2

    export_ctranslate2(checkpoint, tmp_path / "ct2")
    pieces = [loaded.tokenizer.pieces(ids) for ids in loaded.tokenizer.encode(lines[:2])]
    results = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu").translate_batch(
        pieces, beam_size=1, max_decoding_length=our_limits(loaded, lines[:2])[0] - 1,
        suppress_sequences=[["<pad>"]])
    assert results[0].hypotheses[0] == loaded.tokenizer.pieces(
        Translator(loaded.model, loaded.tokenizer, SearchSettings(beam_size=1), torch.device("cpu"), "fp32")
        .translate(lines[:1])[0][0].tokens)


def test_round_trips_keep_the_outputs(marian, trained, tmp_path):
    # export(import(theirs)): transformers' own model and the one that went through ours agree
    folder, theirs = marian
    imported = huggingface.from_transformers(str(folder))
    model = Transformer(imported.config)
    model.load_state_dict(imported.weights)
    save_checkpoint(tmp_path / "imported.pt", model_payload(model.eval(), imported.tokenizer))
    huggingface.export_hf(tmp_path / "imported.pt", tmp_path / "back")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(folder))
    again = transformers.AutoModelForSeq2SeqLM.from_pretrained(str(tmp_path / "back"))
    sources, targets = LINES[:4], multi30k_lines("val", "en", 4)
    before = their_log_probs(theirs, tokenizer, sources, targets)[0]
    after = their_log_probs(again, transformers.AutoTokenizer.from_pretrained(str(tmp_path / "back")), sources,
                            targets)[0]
    assert torch.allclose(before, after, atol=1e-5)
    limits = [40] * len(sources)  # the original saved no length limit of its own
    assert generated(folder, sources, limits) == generated(tmp_path / "back", sources, limits)

    # import(export(ours)): our checkpoint and the one that went through transformers translate alike
    checkpoint = trained / "checkpoints" / "best.pt"
    huggingface.export_hf(checkpoint, tmp_path / "out")
    imported = huggingface.from_transformers(str(tmp_path / "out"))
    model = Transformer(imported.config)
    model.load_state_dict(imported.weights)
    save_checkpoint(tmp_path / "ours_again.pt", model_payload(model.eval(), imported.tokenizer))
    assert our_greedy(tmp_path / "ours_again.pt", LINES) == our_greedy(checkpoint, LINES)


def test_import_refusals_are_one_line(tmp_path, small_corpus):
    offline = train_cli(*TINY, *corpus_overrides(small_corpus, tmp_path), "init.from_hf=Helsinki-NLP/opus-mt-de-en",
                        f"hydra.run.dir={tmp_path / 'run'}", env={**ONE_THREAD, "HF_HUB_OFFLINE": "1"})
    assert offline.returncode == 2, offline.stderr[-2000:]
    assert offline.stderr.count("\n") == 1 and "init.from_hf=Helsinki-NLP/opus-mt-de-en" in offline.stderr

    bart = tmp_path / "bart"
    transformers.BartForConditionalGeneration(transformers.BartConfig(
        vocab_size=20, d_model=8, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=8, decoder_ffn_dim=8)).save_pretrained(str(bart))
    with pytest.raises(InputError, match="a model of type 'bart'"):
        huggingface.from_transformers(str(bart))
    with pytest.raises(InputError, match="not a folder"):
        huggingface.from_transformers(str(tmp_path / "missing"))
    no_tokenizer = tmp_path / "no_tokenizer"
    save_marian(no_tokenizer)
    os.remove(no_tokenizer / "vocab.json")
    with pytest.raises(InputError, match="MarianTokenizer files"):
        huggingface.from_transformers(str(no_tokenizer))


def test_bidirectional_training_of_an_imported_model_with_two_segmentations_is_refused_in_one_line(
        marian, small_corpus, tmp_path):
    folder, _ = marian  # OPUS-MT's German and English SentencePiece models: a turned pair would be cut wrongly
    result = train_cli(*TINY, *corpus_overrides(small_corpus, tmp_path), f"init.from_hf={folder}",
                       "data.bidirectional_steps=2", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.count("\n") == 1 and "data.bidirectional_steps=2" in result.stderr
