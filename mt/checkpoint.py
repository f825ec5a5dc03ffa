"""Checkpoints: one self-contained file (weights, configs, SentencePiece model, training state), written
atomically and loaded without unpickling code."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import zipfile
from pathlib import Path

import torch

from mt.files import InputError, write_atomically

FORMAT = "mt-checkpoint"
VERSION = 1


def model_payload(model, tokenizer, alignment_head=None) -> dict:
    """What a checkpoint needs to translate: the weights and settings of `model` (a Transformer), the bytes of
    `tokenizer`'s SentencePiece model, and the alignment head it was trained with, if any (a dataclass)."""
    return {
        "model": model.state_dict(),
        "model_config": dataclasses.asdict(model.cfg),
        "spm_model": tokenizer.model_bytes,
        "alignment_head": dataclasses.asdict(alignment_head) if alignment_head is not None else None,
    }


def save_checkpoint(path: str | os.PathLike, content: dict) -> None:
    """Write `content` (tensors, numbers, strings, bytes, dicts, lists) atomically: old file or new, never half."""
    payload = {"format": FORMAT, "version": VERSION, **content}
    buffer = io.BytesIO()
    torch.save(payload, buffer)  # serialized first, so a failed write never touches the file on disk
    write_atomically(path, lambda f: f.write(buffer.getbuffer()))


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load a checkpoint of ours; anything else is refused with one line naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint")
    if not zipfile.is_zipfile(path):  # torch.save always writes a zip archive; a cut-off one has no directory
        raise InputError(f"{path}: not a readable checkpoint (truncated, or not written by torch.save)")
    try:
        content = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise InputError(f"{path}: refused to load: it holds Python objects other than tensors and plain data "
                         f"({str(e).splitlines()[0]})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as e:
        raise InputError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise InputError(f"{path}: not a checkpoint of this toolkit")
    if content.get("version") != VERSION:
        raise InputError(f"{path}: checkpoint format version {content.get('version')}, this toolkit reads "
                         f"version {VERSION}")
    return content
