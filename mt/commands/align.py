"""The command behind scripts/align.py and `mt-align`: word links of given sentence pairs (forced decoding), in
one direction or both, symmetrized, or merged with eflomal's; Pharaoh lines out, one per pair."""

from __future__ import annotations

from contextlib import ExitStack

from mt import cli, config
from mt.alignment.links import to_pharaoh
from mt.alignment.merged import eflomal_corpus, merged_alignment, why_not_merged
from mt.alignment.model_links import Direction, ForcedAligner, directed_links, reverse_aligner
from mt.config import AlignConfig
from mt.data import language_file
from mt.files import InputError, check_outputs, open_output, read_lines
from mt.hardware import select_device
from mt.translator import load_model

config.register()


def run(cfg: AlignConfig) -> None:
    check_outputs({"output": cfg.output}, {"source": cfg.source, "target": cfg.target, "checkpoint": cfg.checkpoint,
                                           "reverse_checkpoint": cfg.reverse_checkpoint})
    device = select_device(cfg.device)
    # Both models are loaded (and the settings checked) before the text is read.
    loaded = load_model(cfg.checkpoint, device) if cfg.direction != Direction.reverse else None
    forward = ForcedAligner(loaded, cfg, cfg.batch_tokens, device, cfg.precision) if loaded else None
    corpus = eflomal_corpus(cfg, loaded.about if loaded else {}, why_not_merged(cfg),
                            forward is not None and forward.source is loaded.alignment_head)
    if corpus is not None:
        prefix, languages = corpus
        check_outputs({"output": cfg.output}, {f"eflomal_corpus ({lang})": language_file(prefix, lang)
                                               for lang in languages})
    reverse = reverse_aligner(cfg, cfg.batch_tokens, device, cfg.precision)
    sources, targets = list(read_lines(cfg.source)), list(read_lines(cfg.target))
    if len(sources) != len(targets):
        raise InputError(f"{cfg.source} has {len(sources)} lines but {cfg.target} has {len(targets)}")
    if corpus is not None:
        links = merged_alignment(forward, sources, targets, corpus, cfg, cfg.source)
    else:
        links = directed_links(cfg, forward.links(sources, targets, cfg.source) if forward else None, reverse,
                               sources, targets, cfg.target)
    with ExitStack() as stack:
        out = open_output(stack, cfg.output)
        for pair in links:
            out.write(to_pharaoh(pair) + "\n")


@cli.hydra_command("align")
def main(cfg) -> None:
    run(cli.typed(cfg))
