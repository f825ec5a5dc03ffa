"""The command behind translate.py and `mt-translate`: lines in, translations out (in input order), with n-best
lists, scores against a reference, and the attention behind each translation as word alignments, raw matrices and
TensorBoard heatmaps."""

from __future__ import annotations

import json
import os
import sys
from contextlib import ExitStack
from typing import Optional

from mt import cli, config
from mt.alignment.links import select_heads, to_pharaoh
from mt.alignment.model_links import Direction, ForcedAligner, PairAttention, directed_links, reverse_aligner
from mt.config import TranslateConfig
from mt.evaluate import score
from mt.files import InputError, check_outputs, open_output, read_lines
from mt.hardware import select_device
from mt.search import Hypothesis
from mt.translator import Translator, load_model

config.register()


def _dump_line(number: int, item: Optional[PairAttention], aligner: ForcedAligner) -> str:
    source = aligner.source
    entry = {"line": number, "layer": source.layer, "head": source.head, "shift": source.shift,
             "source_tokens": [], "target_tokens": [], "attention": []}
    if item is not None:
        # One row per decoder step, each labelled with the token that step outputs; with shift, a target word's
        # links are read on the row after its own.
        entry.update(source_tokens=item.src_pieces + ["</s>"], target_tokens=item.tgt_pieces + ["</s>"],
                     attention=[[round(w, 5) for w in row] for row in item.matrix.tolist()])
    return json.dumps(entry, ensure_ascii=False)


def write_results(cfg: TranslateConfig, texts: list[list[str]], translations: list[list[Hypothesis]],
                  attention: Optional[list], links: Optional[list], aligner: Optional[ForcedAligner]) -> None:
    """Write the translations (or n-best lists), and the alignments and attention dump if asked for."""
    with ExitStack() as stack:
        out, links_out, dump = (open_output(stack, name) for name in (cfg.output, cfg.alignments, cfg.attention_dump))
        for i, (hypotheses, hypothesis_texts) in enumerate(zip(translations, texts)):
            if cfg.nbest > 1:
                for hyp, text in zip(hypotheses, hypothesis_texts):
                    out.write(f"{i} ||| {text} ||| {hyp.score:.4f}\n")
            else:
                out.write(hypothesis_texts[0] + "\n")
            if links_out:
                links_out.write(to_pharaoh(links[i]) + "\n")
            if dump:
                dump.write(_dump_line(i, attention[i], aligner) + "\n")
            out.flush()


def write_heatmaps(cfg: TranslateConfig, attention: list[Optional[PairAttention]], aligner: ForcedAligner) -> None:
    from torch.utils.tensorboard import SummaryWriter  # only when asked for: it is slow to import

    from mt.heatmap import attention_figure

    with SummaryWriter(cfg.tensorboard) as writer:
        shown = [(i, item) for i, item in enumerate(attention) if item is not None][:cfg.tensorboard_sentences]
        for i, item in shown:
            panels = [select_heads(item.layers, layer, aligner.source.head) for layer in range(len(item.layers))]
            fig = attention_figure(panels, item.src_pieces + ["</s>"], item.tgt_pieces + ["</s>"], title=f"line {i}")
            writer.add_figure(f"attention/line_{i}", fig, 0)


def run(cfg: TranslateConfig) -> None:
    check_outputs({"output": cfg.output, "alignments": cfg.alignments, "attention_dump": cfg.attention_dump},
                  {"input": cfg.input, "reference": cfg.reference, "checkpoint": cfg.checkpoint,
                   "align.reverse_checkpoint": cfg.align.reverse_checkpoint})
    device = select_device(cfg.device)
    loaded = load_model(cfg.checkpoint, device)
    translator = Translator(loaded.model, loaded.tokenizer, cfg, device, cfg.precision)
    # The aligners are built before translating, so a wrong alignment setting stops the run at once.
    wants_attention = bool(cfg.alignments or cfg.attention_dump or cfg.tensorboard)
    aligner = ForcedAligner(loaded, cfg.align, cfg.batch_tokens, device, cfg.precision) if wants_attention else None
    reverse = reverse_aligner(cfg.align, cfg.batch_tokens, device, cfg.precision) if cfg.alignments else None
    lines = list(read_lines(cfg.input))
    references = list(read_lines(cfg.reference)) if cfg.reference else None
    if references is not None and len(references) != len(lines):
        raise InputError(f"{cfg.reference} has {len(references)} lines but {cfg.input} has {len(lines)}")
    translations = translator.translate(lines, "<stdin>" if cfg.input == "-" else cfg.input)
    texts = [loaded.tokenizer.decode([h.tokens for h in hypotheses]) for hypotheses in translations]
    best = [hypothesis_texts[0] for hypothesis_texts in texts]
    attention = links = None
    if wants_attention:
        # The output as the model reads it back: scripts/align.py on (input, output) gives the same links.
        attention = aligner.attention(lines, best, all_layers=bool(cfg.tensorboard))
        if cfg.alignments:
            forward = None if cfg.align.direction == Direction.reverse else [aligner.links_of(a) for a in attention]
            links = directed_links(cfg.align, forward, reverse, lines, best)
    write_results(cfg, texts, translations, attention, links, aligner)
    if cfg.tensorboard:
        write_heatmaps(cfg, attention, aligner)
    if references is not None:
        print(f"{os.path.basename(cfg.reference)}: {score(best, references)}", file=sys.stderr)


@cli.hydra_command("translate")
def main(cfg) -> None:
    run(cli.typed(cfg))
