"""The command behind scripts/eval_alignment.py: alignment error rate, precision and recall of predicted word
alignments against a gold standard, both in Pharaoh form, with the monotone diagonal as the baseline."""

from __future__ import annotations

import argparse
import json

from mt import cli
from mt.align import alignment_error_rate, diagonal_links, read_pharaoh
from mt.files import InputError, read_lines

DESCRIPTION = """\
Alignment error rate of predicted word alignments against a gold standard, both in Pharaoh form.

GOLD: one line per sentence pair; `i-j` (or `i-jS`) is a sure link, `i?j`, `i-jP` or `i-jp` a possible one
(source word i, target word j, counted from 0). PRED: `i-j` links, one line per pair. Prints AER, precision and
recall (Och and Ney 2003); with --source and --target (the sentence pairs, whitespace words) also the same for
the monotone diagonal alignment, the baseline a number should beat."""


def read_alignments(path: str) -> list[tuple[set, set]]:
    try:
        return [read_pharaoh(line, f"{path}:{number}") for number, line in enumerate(read_lines(path), start=1)]
    except ValueError as e:
        raise InputError(str(e)) from None


def read_pairs(source: str, target: str, count: int, gold: str) -> tuple[list[str], list[str]]:
    sources, targets = list(read_lines(source)), list(read_lines(target))
    if not len(sources) == len(targets) == count:
        raise InputError(f"{source}, {target} and {gold} must have as many lines "
                         f"({len(sources)}, {len(targets)}, {count})")
    return sources, targets


def evaluate(args: argparse.Namespace) -> dict[str, dict]:
    """AER, precision, recall and link count of each aligner scored (the prediction, the diagonal)."""
    gold, pred = read_alignments(args.gold), read_alignments(args.pred)
    if len(gold) != len(pred):
        raise InputError(f"{args.gold} has {len(gold)} lines but {args.pred} has {len(pred)}")
    scores = {"alignment": alignment_error_rate(gold, [possible for _, possible in pred])}
    if args.source and args.target:
        sources, targets = read_pairs(args.source, args.target, len(gold), args.gold)
        diagonal = [diagonal_links(len(s.split()), len(t.split())) for s, t in zip(sources, targets)]
        scores["diagonal"] = alignment_error_rate(gold, diagonal)
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gold")
    parser.add_argument("pred")
    parser.add_argument("--source", help="the source sentences, for the diagonal baseline")
    parser.add_argument("--target", help="the target sentences, for the diagonal baseline")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    with cli.one_line_errors():
        scores = evaluate(args)
    if args.json:
        print(json.dumps({**scores["alignment"], "diagonal": scores.get("diagonal")}))
        return 0
    sentences = len(read_alignments(args.gold))
    for name, result in scores.items():
        print(f"{name:<9}  AER {result['aer']:.4f}  precision {result['precision']:.4f}  "
              f"recall {result['recall']:.4f}  ({result['links']} links, {sentences} sentences)")
    return 0
