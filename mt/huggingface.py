"""Models in and out of Hugging Face `transformers`: a checkpoint written as a folder that
AutoModelForSeq2SeqLM and AutoTokenizer load, and a MarianMT model (the OPUS-MT family) read as our Transformer.

A post-norm model is a MarianMTModel; a pre-norm one a PegasusForConditionalGeneration, which is MarianMT with
pre-norm layers and a final norm per stack. Both read text with MarianTokenizer (source.spm, target.spm,
vocab.json). transformers adds sines and cosines as two halves of the model dimension, where ours interleave them:
the weights go across under a fixed permutation of that dimension, which layer norms and linear maps follow
exactly. transformers is the optional `hf` extra; only this module imports it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from mt.files import InputError, write_folder, write_text
from mt.model import Activation, ModelConfig, Transformer, beyond_layer_norm, fix_norm_folded
from mt.tokenizer import Tokenizer
from mt.translator import load_model

log = logging.getLogger(__name__)

INSTALL = "pip install '.[hf]'"
# transformers names our activations as we do; "silu" is its other name for swish
IMPORTED_ACTIVATIONS = {**{a.value: a for a in Activation}, "silu": Activation.swish}
NORM_OF_TYPE = {"marian": False, "pegasus": True}  # model_type -> pre_norm


def _transformers():
    try:
        import transformers
    except ImportError:
        raise InputError(f"transformers is not installed: {INSTALL}") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    # MarianTokenizer recommends sacremoses for a normalization it never applies; nothing to act on.
    warnings.filterwarnings("ignore", message="Recommended: pip install sacremoses")
    return transformers


# ------------------------------------------------------------------ the weights, both ways

def _halves(d_model: int) -> torch.Tensor:
    """transformers' model dimension j is ours halves[j]: the even (sine) dimensions, then the odd (cosine)."""
    return torch.cat([torch.arange(0, d_model, 2), torch.arange(1, d_model, 2)])


def _key_pairs(cfg: ModelConfig) -> list[tuple[str, str, str]]:
    """(our name, transformers' name, where the model dimension lies: rows, columns or a vector) for every
    weight; the embeddings and the output layer are handled apart."""
    pairs = []

    def attention(ours: str, theirs: str) -> None:
        for projection in ("q_proj", "k_proj", "v_proj"):
            pairs.extend([(f"{ours}.{projection}.weight", f"{theirs}.{projection}.weight", "columns"),
                          (f"{ours}.{projection}.bias", f"{theirs}.{projection}.bias", "none")])
        pairs.extend([(f"{ours}.out_proj.weight", f"{theirs}.out_proj.weight", "rows"),
                      (f"{ours}.out_proj.bias", f"{theirs}.out_proj.bias", "vector")])

    def norm(ours: str, theirs: str) -> None:
        pairs.extend([(f"{ours}.weight", f"{theirs}.weight", "vector"), (f"{ours}.bias", f"{theirs}.bias", "vector")])

    def ffn(ours: str, theirs: str) -> None:
        pairs.extend([(f"{ours}.0.weight", f"{theirs}.fc1.weight", "columns"),
                      (f"{ours}.0.bias", f"{theirs}.fc1.bias", "none"),
                      (f"{ours}.2.weight", f"{theirs}.fc2.weight", "rows"),
                      (f"{ours}.2.bias", f"{theirs}.fc2.bias", "vector")])

    for i in range(cfg.encoder_layers):
        ours, theirs = f"encoder.{i}", f"model.encoder.layers.{i}"
        attention(f"{ours}.self_attn", f"{theirs}.self_attn")
        norm(f"{ours}.attn_block.norm", f"{theirs}.self_attn_layer_norm")
        ffn(f"{ours}.ffn", theirs)
        norm(f"{ours}.ffn_block.norm", f"{theirs}.final_layer_norm")
    for i in range(cfg.decoder_layers):
        ours, theirs = f"decoder.{i}", f"model.decoder.layers.{i}"
        attention(f"{ours}.self_attn", f"{theirs}.self_attn")
        norm(f"{ours}.self_block.norm", f"{theirs}.self_attn_layer_norm")
        attention(f"{ours}.cross_attn", f"{theirs}.encoder_attn")
        norm(f"{ours}.cross_block.norm", f"{theirs}.encoder_attn_layer_norm")
        ffn(f"{ours}.ffn", theirs)
        norm(f"{ours}.ffn_block.norm", f"{theirs}.final_layer_norm")
    if cfg.pre_norm:
        norm("encoder_norm", "model.encoder.layer_norm")
        norm("decoder_norm", "model.decoder.layer_norm")
    return pairs


def _moved(tensor: torch.Tensor, where: str, order: torch.Tensor) -> torch.Tensor:
    if where == "rows" or where == "vector":
        return tensor.index_select(0, order)
    if where == "columns":
        return tensor.index_select(1, order)
    return tensor


def their_weights(model: Transformer) -> dict[str, torch.Tensor]:
    """Our model's weights under transformers' names and dimension order."""
    cfg, ours = model.cfg, model.state_dict()
    order = _halves(cfg.d_model)
    theirs = {name: _moved(ours[key], where, order).clone() for key, name, where in _key_pairs(cfg)}
    embedding = ours["src_embed.weight"].index_select(1, order)
    theirs.update({"model.shared.weight": embedding, "model.encoder.embed_tokens.weight": embedding,
                   "model.decoder.embed_tokens.weight": embedding, "lm_head.weight": embedding})
    bias = ours["output.bias"] if cfg.output_bias else torch.zeros(cfg.vocab_size, dtype=embedding.dtype)
    theirs["final_logits_bias"] = bias.reshape(1, -1).clone()
    return theirs


def our_weights(cfg: ModelConfig, theirs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' weights of a model `cfg` describes, under our names and dimension order."""
    back = torch.argsort(_halves(cfg.d_model))
    ours = {key: _moved(theirs[name], where, back) for key, name, where in _key_pairs(cfg)}
    embedding = theirs["model.shared.weight"].index_select(1, back)
    ours.update({"src_embed.weight": embedding, "tgt_embed.weight": embedding, "output.weight": embedding,
                 "output.bias": theirs["final_logits_bias"].reshape(-1)})
    return ours


# ------------------------------------------------------------------ export

def hf_config(transformers, cfg: ModelConfig):
    """transformers' configuration of a model like ours (MarianConfig post-norm, PegasusConfig pre-norm)."""
    if not cfg.tie_embeddings:
        raise InputError("the model has separate source, target and output embeddings (model.tie_embeddings="
                         "false); the Hugging Face export writes models with one shared embedding")
    if beyond := beyond_layer_norm(cfg):
        raise InputError(f"the model was trained with {beyond}; transformers' MarianMT and Pegasus models have "
                         "LayerNorm, so it cannot be exported")
    kind = transformers.PegasusConfig if cfg.pre_norm else transformers.MarianConfig
    return kind(
        vocab_size=cfg.vocab_size, d_model=cfg.d_model, max_position_embeddings=cfg.max_positions,
        encoder_layers=cfg.encoder_layers, decoder_layers=cfg.decoder_layers,
        encoder_attention_heads=cfg.n_heads, decoder_attention_heads=cfg.n_heads,
        encoder_ffn_dim=cfg.ffn_dim, decoder_ffn_dim=cfg.ffn_dim,
        activation_function=Activation(cfg.activation).value, scale_embedding=cfg.scale_embeddings,
        dropout=cfg.dropout, attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
        pad_token_id=cfg.pad_id, eos_token_id=cfg.eos_id, decoder_start_token_id=cfg.bos_id,
        forced_eos_token_id=cfg.eos_id, bos_token_id=None, tie_word_embeddings=True,
    )


def to_transformers(model: Transformer):
    """Our model as a transformers model (MarianMTModel or PegasusForConditionalGeneration), same outputs."""
    transformers = _transformers()
    config = hf_config(transformers, model.cfg)  # a refusal comes before the copy
    model = fix_norm_folded(model)
    kind = transformers.PegasusForConditionalGeneration if model.cfg.pre_norm else transformers.MarianMTModel
    theirs = kind(config).to(next(model.parameters()).dtype)
    missing, unexpected = theirs.load_state_dict(their_weights(model), strict=False)
    assert not unexpected and all("embed_positions" in name for name in missing), (missing, unexpected)
    theirs.generation_config = transformers.GenerationConfig(
        decoder_start_token_id=model.cfg.bos_id, eos_token_id=model.cfg.eos_id, pad_token_id=model.cfg.pad_id,
        forced_eos_token_id=model.cfg.eos_id, max_length=model.cfg.max_positions,
        # Our search never outputs these (search.py); without this, transformers may.
        suppress_tokens=sorted({model.cfg.pad_id, model.cfg.bos_id}),
        num_beams=5,
    )
    return theirs.eval()


def save_tokenizer(transformers, tokenizer: Tokenizer, folder: Path, languages: tuple[str, str],
                   max_positions: int) -> None:
    """MarianTokenizer's files for `tokenizer`: a joint SentencePiece model becomes both source.spm and
    target.spm, numbered by its own ids."""
    if tokenizer.vocabulary is None:
        source = target = tokenizer.model_bytes
        vocabulary = tokenizer.pieces(list(range(tokenizer.vocab_size)))
        special = {"pad": "<pad>", "unk": "<unk>", "eos": "</s>"}
    else:
        source, target = tokenizer.model_bytes, tokenizer.target_model_bytes or tokenizer.model_bytes
        vocabulary, special = tokenizer.vocabulary, tokenizer.special_pieces
    (folder / "source.spm").write_bytes(source)
    (folder / "target.spm").write_bytes(target)
    write_text(folder / "vocab.json", json.dumps({p: i for i, p in enumerate(vocabulary)}, ensure_ascii=False))
    marian = transformers.MarianTokenizer(
        str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json"),
        source_lang=languages[0], target_lang=languages[1], unk_token=special["unk"], eos_token=special["eos"],
        pad_token=special["pad"], model_max_length=max_positions,
        clean_up_tokenization_spaces=False)  # "a ." stays "a ."
    marian.save_pretrained(str(folder))
    # PegasusConfig models read text with MarianTokenizer too: AutoTokenizer follows this name.
    config_path = folder / "tokenizer_config.json"
    settings = json.loads(config_path.read_text())
    settings["tokenizer_class"] = "MarianTokenizer"
    write_text(config_path, json.dumps(settings, indent=2, ensure_ascii=False))


def export_hf(checkpoint: str | os.PathLike, out_dir: str | os.PathLike, force: bool = False,
              push: Optional[str] = None) -> Path:
    """Write the model of `checkpoint` to `out_dir` as a transformers model with its tokenizer and a model card;
    with `push`, upload the folder to that Hub repository."""
    transformers = _transformers()

    def fill(folder: Path) -> None:  # after the output folder's checks: a refusal comes before any work
        loaded = load_model(str(checkpoint), torch.device("cpu"))
        theirs = to_transformers(loaded.model)
        data = (loaded.about.get("config") or {}).get("data", {})
        languages = (data.get("src_lang", "src"), data.get("tgt_lang", "tgt"))
        theirs.save_pretrained(str(folder), safe_serialization=True)
        save_tokenizer(transformers, loaded.tokenizer, folder, languages, loaded.model.cfg.max_positions)
        write_text(folder / "README.md", model_card(loaded.about, theirs, languages, _run_results(checkpoint)))

    written = write_folder(out_dir, fill, "a Hugging Face model", "config.json", force, checkpoint)
    if push:
        upload(written, push)
    return written


def _run_results(checkpoint: str | os.PathLike) -> dict:
    """results.json of the run a best.pt comes from (RUN/checkpoints/best.pt), if it is there."""
    path = Path(checkpoint).resolve().parent.parent / "results.json"
    try:
        return json.loads(path.read_text()) if Path(checkpoint).name == "best.pt" and path.is_file() else {}
    except (OSError, ValueError):
        return {}


def model_card(about: dict, theirs, languages: tuple[str, str], results: dict) -> str:
    """README.md of an export: what the model is, its data and recipe, its scores, and the data's licence."""
    config = about.get("config") or {}
    data = config.get("data", {})
    source, target = languages
    corpus = data.get("hub_name") or data.get("train") or "unknown"
    if "multi30k" in str(corpus):
        licence = ("Multi30k's terms: caption text for non-commercial research and educational use, images under "
                   "the Flickr Terms of Use (Elliott et al. 2016)")
    else:
        licence = "that of the training corpus: check its own terms"
    dev = about.get("dev") or {}
    lines = [
        "---", f"language: [{source}, {target}]", "library_name: transformers", "pipeline_tag: translation",
        "tags: [translation, mt]", "---", "",
        f"# {source}->{target} translation ({type(theirs).__name__})", "",
        f"Trained with the mt toolkit (MIT licence) and exported by its mt-export-hf: a {theirs.config.encoder_layers}+"
        f"{theirs.config.decoder_layers}-layer Transformer, d_model {theirs.config.d_model}, "
        f"{sum(p.numel() for p in theirs.parameters()) / 1e6:.1f}M parameters.", "",
        "```python", "from transformers import pipeline",
        'translate = pipeline("translation", model="PATH_OR_REPO")', 'print(translate("...")[0]["translation_text"])',
        "```", "",
        "## Data", "", f"- training corpus: `{corpus}`; dev: `{data.get('dev') or 'hub split'}`",
        f"- data licence: {licence}", "",
        "## Recipe", "", "```json", json.dumps({key: config.get(key) for key in ("model", "optim", "trainer", "align")},
                                              indent=1, default=str), "```", "",
        "## Scores", "",
    ]
    if dev:
        lines += [f"- dev (step {about.get('step', '?')}, greedy search): BLEU {dev['bleu']:.2f}, chrF "
                  f"{dev['chrf']:.2f}, lowercased BLEU {dev['bleu_lowercase']:.2f}",
                  f"- sacreBLEU signatures: `{dev['bleu_signature']}`, `{dev['chrf_signature']}`"]
    for name, scores in (results.get("test") or {}).items():
        lines.append(f"- {name} (greedy search): BLEU {scores['bleu']:.2f}, chrF {scores['chrf']:.2f}")
    if not dev and not results.get("test"):
        lines.append("- no scores were stored with this checkpoint")
    return "\n".join(lines) + "\n"


def upload(folder: Path, repo: str) -> None:
    try:
        import huggingface_hub

        api = huggingface_hub.HfApi()
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo)
    except Exception as e:  # offline, no token, no rights: what the Hub said, in one line
        raise InputError(f"--push {repo}: could not upload {folder} to the Hugging Face Hub ({_first_line(e)}); "
                         "the export itself is written") from None
    log.info("pushed %s to https://huggingface.co/%s", folder, repo)


# ------------------------------------------------------------------ import

@dataclass
class Imported:
    config: ModelConfig
    weights: dict[str, torch.Tensor]
    tokenizer: Tokenizer


def local_folder(name_or_dir: str) -> Path:
    """A local folder as it is; a Hub name downloaded (or found in the Hub cache)."""
    if Path(name_or_dir).is_dir():
        return Path(name_or_dir)
    if Path(name_or_dir).exists() or name_or_dir.startswith((".", "/")):
        raise InputError(f"init.from_hf={name_or_dir}: not a folder holding a Hugging Face model")
    try:
        import huggingface_hub

        return Path(huggingface_hub.snapshot_download(name_or_dir, allow_patterns=[
            "*.json", "*.spm", "*.safetensors", "pytorch_model.bin", "README.md"]))
    except Exception as e:  # offline, an unknown name, no rights
        raise InputError(f"init.from_hf={name_or_dir}: not a local folder, and the Hugging Face Hub could not give "
                         f"it ({_first_line(e)})") from None


def _first_line(error: Exception) -> str:
    """What the Hub (or its client) said, in one line."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def from_transformers(name_or_dir: str) -> Imported:
    """The architecture, weights and tokenizer of a MarianMT model (or one this toolkit exported) as ours."""
    transformers = _transformers()
    folder = local_folder(name_or_dir)
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder))
    except (OSError, ValueError) as e:
        raise InputError(f"init.from_hf={name_or_dir}: no model configuration there ({str(e).splitlines()[0]})") \
            from None
    cfg = _our_config(config, name_or_dir)
    tokenizer = _read_tokenizer(folder, config, name_or_dir)
    kind = transformers.PegasusForConditionalGeneration if cfg.pre_norm else transformers.MarianMTModel
    theirs = kind.from_pretrained(str(folder))
    if tokenizer.special != dataclasses.replace(tokenizer.special, pad=cfg.pad_id, bos=cfg.bos_id, eos=cfg.eos_id):
        raise InputError(f"init.from_hf={name_or_dir}: the tokenizer's special tokens {tokenizer.special} differ "
                         "from the model's configuration")
    weights = our_weights(cfg, {k: v.detach().float() for k, v in theirs.state_dict().items()})
    log.info("init.from_hf=%s: %s, %.1fM parameters, vocabulary of %d", name_or_dir, type(theirs).__name__,
             sum(p.numel() for p in theirs.parameters()) / 1e6, tokenizer.vocab_size)
    return Imported(cfg, weights, tokenizer)


def _our_config(config, name: str) -> ModelConfig:
    def refuse(why: str):
        raise InputError(f"init.from_hf={name}: {why}; this toolkit imports MarianMT models (and its own exports)")

    if config.model_type not in NORM_OF_TYPE:
        refuse(f"a model of type {config.model_type!r}")
    if config.activation_function not in IMPORTED_ACTIVATIONS:
        refuse(f"its activation {config.activation_function!r} is not one of {', '.join(IMPORTED_ACTIVATIONS)}")
    shared = getattr(config, "share_encoder_decoder_embeddings", True) and config.tie_word_embeddings
    if not shared or (getattr(config, "decoder_vocab_size", None) or config.vocab_size) != config.vocab_size:
        refuse("separate source and target vocabularies or embeddings")
    if (config.encoder_attention_heads, config.encoder_ffn_dim) != (config.decoder_attention_heads,
                                                                    config.decoder_ffn_dim):
        refuse("encoder and decoder layers of different widths")
    return ModelConfig(
        vocab_size=config.vocab_size, d_model=config.d_model, n_heads=config.encoder_attention_heads,
        encoder_layers=config.encoder_layers, decoder_layers=config.decoder_layers, ffn_dim=config.encoder_ffn_dim,
        dropout=config.dropout, attention_dropout=config.attention_dropout,
        activation_dropout=config.activation_dropout,
        activation=IMPORTED_ACTIVATIONS[config.activation_function], pre_norm=NORM_OF_TYPE[config.model_type],
        tie_embeddings=True, scale_embeddings=bool(config.scale_embedding), output_bias=True,
        max_positions=config.max_position_embeddings,
        pad_id=config.pad_token_id, bos_id=config.decoder_start_token_id, eos_id=_one(config.eos_token_id),
    )


def _one(token_id) -> int:
    return token_id[0] if isinstance(token_id, list) else token_id


def _read_tokenizer(folder: Path, config, name: str) -> Tokenizer:
    settings_path = folder / "tokenizer_config.json"
    settings = json.loads(settings_path.read_text()) if settings_path.is_file() else {}
    files = [folder / f for f in ("source.spm", "target.spm", "vocab.json")]
    if not all(f.is_file() for f in files) or settings.get("separate_vocabs"):
        raise InputError(f"init.from_hf={name}: no MarianTokenizer files with one shared vocabulary (source.spm, "
                         "target.spm, vocab.json) beside the model")
    numbered = json.loads(files[2].read_text())
    vocabulary = [None] * config.vocab_size
    for piece, i in numbered.items():
        if 0 <= i < config.vocab_size:
            vocabulary[i] = piece
    if None in vocabulary:
        raise InputError(f"init.from_hf={name}: vocab.json does not number ids 0..{config.vocab_size - 1}")

    def piece(key: str, default: str) -> str:
        value = settings.get(key, default)
        return value["content"] if isinstance(value, dict) else value

    special = {"pad": piece("pad_token", "<pad>"), "unk": piece("unk_token", "<unk>"),
               "bos": vocabulary[config.decoder_start_token_id], "eos": piece("eos_token", "</s>")}
    try:
        return Tokenizer(files[0].read_bytes(), files[1].read_bytes(), vocabulary, special)
    except (ValueError, RuntimeError) as e:
        raise InputError(f"init.from_hf={name}: its tokenizer cannot be read ({e})") from None
