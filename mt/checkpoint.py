"""Checkpoints: one self-contained file (weights, configs, SentencePiece model, training state), written
atomically and loaded without unpickling code."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import pickle
import zipfile
from enum import Enum
from pathlib import Path

import torch

from mt.files import InputError, remove_partial_writes, write_atomically

log = logging.getLogger(__name__)

FORMAT = "mt-checkpoint"
VERSION = 1
CHECKSUM = "checksum"  # of everything else in the file (payload_checksum)


def model_payload(model, tokenizer, alignment_head=None) -> dict:
    """What a checkpoint needs to translate: the weights and settings of `model` (a Transformer), the bytes of
    `tokenizer`'s SentencePiece model(s), and the alignment head it was trained with, if any (a dataclass)."""
    return {
        "model": model.state_dict(),
        "model_config": plain_settings(model.cfg),
        **tokenizer.checkpoint_fields(),
        "alignment_head": dataclasses.asdict(alignment_head) if alignment_head is not None else None,
    }


def plain_settings(settings) -> dict:
    """A settings dataclass as plain data (enums as their values), as a checkpoint may hold it."""
    return {key: value.value if isinstance(value, Enum) else value
            for key, value in dataclasses.asdict(settings).items()}


def payload_checksum(content) -> str:
    """SHA-256 of a checkpoint's content, walked in a fixed order (tensors by dtype, shape and bytes), so a byte
    changed anywhere in the file's data, weights included, shows."""
    digest = hashlib.sha256()

    def walk(value) -> None:
        if isinstance(value, torch.Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            digest.update(f"T{flat.dtype}{tuple(value.shape)};".encode())
            digest.update(flat.view(torch.uint8).numpy())
        elif isinstance(value, dict):
            digest.update(f"D{len(value)};".encode())
            for key in sorted(value, key=repr):
                digest.update(f"{key!r}:".encode())
                walk(value[key])
        elif isinstance(value, (list, tuple)):
            digest.update(f"L{len(value)};".encode())
            for item in value:
                walk(item)
        elif isinstance(value, (bytes, bytearray)):
            digest.update(f"B{len(value)};".encode())
            digest.update(value)
        else:
            digest.update(f"V{value!r};".encode())

    walk(content)
    return digest.hexdigest()


def save_checkpoint(path: str | os.PathLike, content: dict) -> None:
    """Write `content` (tensors, numbers, strings, bytes, dicts, lists) atomically: old file or new, never half;
    a checksum of it goes with it."""
    payload = {"format": FORMAT, "version": VERSION, **content}
    payload[CHECKSUM] = payload_checksum(payload)
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
    stored = content.pop(CHECKSUM, None)
    if stored is None:
        log.warning("%s: written before checkpoints carried a checksum; it cannot be checked for damage", path)
    elif stored != payload_checksum(content):
        raise InputError(f"{path}: damaged: its contents do not match the checksum written with them (a changed or "
                         "corrupted file); use another checkpoint, e.g. step_N.pt or last.pt of the same run")
    return content


def check_resumable(state: dict, path: Path, model_config, tokenizer_fields: dict) -> None:
    """A run resumes from `state` (read from `path`) only with the same model settings and vocabulary. A setting
    added since the checkpoint was written counts at its default, as loading the model does."""
    try:
        stored = plain_settings(type(model_config)(**state["model_config"]))
    except (TypeError, ValueError):  # a setting this version does not know, or a value it refuses
        stored = state["model_config"]
    if stored != plain_settings(model_config):
        raise InputError(f"{path}: its model settings differ from this run's ({state['model_config']}); "
                         "resume with the same model.* and data.tokenizer.* settings")
    if any(state.get(key) != value for key, value in tokenizer_fields.items()):
        raise InputError(f"{path}: its SentencePiece vocabulary differs from this run's; resume with the same "
                         "data and data.tokenizer.* settings")


def random_state(device: torch.device) -> dict:
    """The random generators' states, which a resumed run restores to draw what an uninterrupted one would."""
    return {"rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if device.type == "cuda" else []}


def restore_random_state(state: dict) -> None:
    torch.set_rng_state(state["rng"])
    if state["cuda_rng"]:
        torch.cuda.set_rng_state_all(state["cuda_rng"])


class RunCheckpoints:
    """A training run's checkpoints and which are kept: last.pt (everything a resumed run needs), best.pt (the
    best on dev so far, as translate.py loads it) and step_N.pt (the last `keep` evaluations, for averaging)."""

    def __init__(self, folder: str | os.PathLike, keep: int):
        self.folder, self.keep = Path(folder), keep
        self.last, self.best = self.folder / "last.pt", self.folder / "best.pt"

    def remove_partial_writes(self) -> None:
        """Drop what a process killed while saving left behind."""
        remove_partial_writes(self.folder)

    def save(self, state: dict, step: int, best: dict | None = None, evaluated: dict | None = None) -> None:
        """last.pt gets `state`; after an evaluation step_N.pt gets `evaluated` (the oldest beyond `keep` go), and
        best.pt gets `best` when the evaluation found a new best."""
        # best.pt before last.pt: a crash between the two leaves last.pt older, and resuming from it redoes
        # this evaluation and writes best.pt again. The other order could leave a best.pt that resume never fixes.
        if best is not None:
            save_checkpoint(self.best, best)
        if evaluated is not None and self.keep > 0:
            save_checkpoint(self.folder / f"step_{step}.pt", evaluated)
            kept = sorted(self.folder.glob("step_*.pt"), key=lambda p: int(p.stem.split("_")[1]))
            for old in kept[:-self.keep]:
                old.unlink()
        save_checkpoint(self.last, state)
