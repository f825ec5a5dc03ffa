"""The align job behind scripts/align.py: word links of given sentence pairs (forced decoding), in one direction
or both, symmetrized; Pharaoh lines out, one per pair."""

from __future__ import annotations

from contextlib import ExitStack

from mt import align
from mt.aligner import Direction, ForcedAligner, combine, flipped, reverse_aligner
from mt.config import AlignConfig
from mt.files import InputError, open_output, read_lines
from mt.hardware import select_device
from mt.translator import load_model


def run(cfg: AlignConfig) -> None:
    device = select_device(cfg.device)
    # Both models are loaded (and the settings checked) before the text is read.
    forward = None
    if cfg.direction != Direction.reverse:
        forward = ForcedAligner(load_model(cfg.checkpoint, device), cfg, cfg.batch_tokens, device, cfg.precision)
    reverse = reverse_aligner(cfg, cfg.batch_tokens, device, cfg.precision)
    sources, targets = list(read_lines(cfg.source)), list(read_lines(cfg.target))
    if len(sources) != len(targets):
        raise InputError(f"{cfg.source} has {len(sources)} lines but {cfg.target} has {len(targets)}")
    links = combine(cfg, forward.links(sources, targets, cfg.source) if forward else None,
                    flipped(reverse.links(targets, sources, cfg.target)) if reverse else None)
    with ExitStack() as stack:
        out = open_output(stack, cfg.output)
        for pair in links:
            out.write(align.to_pharaoh(pair) + "\n")
