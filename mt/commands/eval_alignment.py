"""The command behind scripts/eval_alignment.py: alignment error rate, precision and recall of predicted word
alignments against a gold standard, beside the monotone diagonal and eflomal run on the same pairs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mt import cli
from mt.alignment.gold import eflomal_with_corpus, read_alignments, read_corpus, scores_against_gold, table_row
from mt.alignment.head import AlignmentTrainingConfig
from mt.alignment.links import diagonal_links
from mt.files import InputError, read_lines
from mt.tokenizer import Tokenizer

DESCRIPTION = """\
Alignment error rate of predicted word alignments against a gold standard, all in Pharaoh form.

GOLD: one line per sentence pair; `i-j` (or `i-jS`) is a sure link, `i?j`, `i-jP` or `i-jp` a possible one
(source word i, target word j, counted from 0). PRED: `i-j` links, one line per pair; several files give a row
each. Prints AER, precision and recall (Och and Ney 2003). With --source and --target (the sentence pairs,
whitespace words), also the monotone diagonal alignment, the baseline a number should beat; with --eflomal
PREFIX also eflomal (pip install '.[align]'), run on the gold pairs together with the corpus PREFIX.SRC and
PREFIX.TGT (e.g. the model's training data), both directions symmetrized with grow-diag-final; with
--eflomal-pieces SPM_MODEL also eflomal as training runs it for the alignment head (on the words' SentencePiece
pieces, several runs, the links most runs found)."""


def read_pairs(args: argparse.Namespace, count: int) -> tuple[list[str], list[str]]:
    if not (args.source and args.target):
        raise InputError("--source and --target (the gold sentence pairs) are needed for the diagonal and eflomal")
    sources, targets = list(read_lines(args.source)), list(read_lines(args.target))
    if not len(sources) == len(targets) == count:
        raise InputError(f"{args.source}, {args.target} and {args.gold} must have as many lines "
                         f"({len(sources)}, {len(targets)}, {count})")
    return sources, targets


def read_tokenizer(path: str) -> Tokenizer:
    try:
        return Tokenizer(Path(path).read_bytes())
    except (OSError, RuntimeError, ValueError) as e:
        raise InputError(f"{path}: not a SentencePiece model of this toolkit ({e})") from None


def evaluate(args: argparse.Namespace) -> tuple[dict[str, dict], int]:
    """AER, precision, recall and link count of each aligner (the diagonal, eflomal, each prediction file), with
    --bootstrap their intervals, and the number of sentence pairs."""
    if args.bootstrap < 0:
        raise InputError(f"--bootstrap {args.bootstrap}: the number of resamples cannot be negative")
    gold = read_alignments(args.gold)
    aligned = {}
    if args.eflomal_pieces and not args.eflomal:
        raise InputError("--eflomal-pieces needs --eflomal PREFIX (the corpus eflomal aligns the gold pairs with)")
    if args.source or args.target or args.eflomal:
        sources, targets = read_pairs(args, len(gold))
        aligned["diagonal"] = [diagonal_links(len(s.split()), len(t.split())) for s, t in zip(sources, targets)]
        if args.eflomal:
            corpus = read_corpus(args.eflomal, args.languages)
            aligned["eflomal"] = eflomal_with_corpus(sources, targets, corpus)
        if args.eflomal_pieces:
            aligned["eflomal-pieces"] = eflomal_with_corpus(
                sources, targets, corpus, tokenizer=read_tokenizer(args.eflomal_pieces), runs=args.eflomal_runs,
                votes=args.eflomal_votes)
    names = prediction_names(args.pred)
    for name, path in zip(names, args.pred):
        pred = read_alignments(path)
        if len(gold) != len(pred):
            raise InputError(f"{args.gold} has {len(gold)} lines but {path} has {len(pred)}")
        aligned[name] = [possible for _, possible in pred]
    return scores_against_gold(gold, aligned, args.bootstrap, reference=names[0] if names else None), len(gold)


def prediction_names(paths: list[str]) -> list[str]:
    """A row name per prediction file: "alignment" for a single one, else the file names."""
    return ["alignment"] if len(paths) == 1 else [Path(path).name for path in paths]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("gold")
    parser.add_argument("pred", nargs="*", help="predicted alignments, one file per aligner")
    parser.add_argument("--source", help="the gold's source sentences (for the diagonal and eflomal)")
    parser.add_argument("--target", help="the gold's target sentences")
    parser.add_argument("--eflomal", metavar="PREFIX", help="run eflomal on the gold pairs and PREFIX.SRC/.TGT")
    parser.add_argument("--languages", nargs=2, default=["de", "en"], metavar=("SRC", "TGT"),
                        help="the language suffixes of the --eflomal corpus (default: de en)")
    parser.add_argument("--eflomal-pieces", metavar="SPM_MODEL",
                        help="also eflomal on the words' pieces of SPM_MODEL (a run's spm.model), as training runs "
                             "it for the alignment head")
    parser.add_argument("--eflomal-runs", type=int, default=AlignmentTrainingConfig.eflomal_runs, metavar="N",
                        help="--eflomal-pieces: eflomal runs N times (default: as training, %(default)s)")
    parser.add_argument("--eflomal-votes", type=int, default=AlignmentTrainingConfig.eflomal_votes, metavar="K",
                        help="--eflomal-pieces: the links at least K runs found (default: as training, %(default)s)")
    parser.add_argument("--bootstrap", type=int, default=0, metavar="N",
                        help="N paired resamples of the sentence pairs: each AER's 95%% interval, and of its "
                             "difference from the first PRED's (0: none)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    with cli.one_line_errors():
        scores, sentences = evaluate(args)
    if args.json:
        first = scores.get("alignment") or {}
        print(json.dumps({**first, **{name: result for name, result in scores.items() if name != "alignment"}}))
        return 0
    width = max(map(len, scores), default=9)
    reference = (prediction_names(args.pred) or [None])[0]
    for name, result in scores.items():
        print(table_row(name, result, sentences, width, reference))
    return 0
