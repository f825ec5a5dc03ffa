"""Alignment error rate of predicted word alignments against a gold standard, both in Pharaoh form.

    python scripts/eval_alignment.py GOLD PRED

GOLD: one line per sentence pair; `i-j` (or `i-jS`) is a sure link, `i?j`, `i-jP` or `i-jp` a possible one
(source word i, target word j, counted from 0). PRED: `i-j` links, one line per pair. Prints AER, precision and
recall (Och and Ney 2003); with --source and --target (the sentence pairs, whitespace words) also the same for
the monotone diagonal alignment, the baseline a number should beat.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mt.align import alignment_error_rate, diagonal_links, read_pharaoh  # noqa: E402
from mt.files import InputError, read_lines  # noqa: E402


def read_alignments(path: str) -> list[tuple[set, set]]:
    try:
        return [read_pharaoh(line, f"{path}:{number}") for number, line in enumerate(read_lines(path), start=1)]
    except ValueError as e:
        raise InputError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("gold")
    parser.add_argument("pred")
    parser.add_argument("--source", help="the source sentences, for the diagonal baseline")
    parser.add_argument("--target", help="the target sentences, for the diagonal baseline")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    try:
        gold, pred = read_alignments(args.gold), read_alignments(args.pred)
        if len(gold) != len(pred):
            raise InputError(f"{args.gold} has {len(gold)} lines but {args.pred} has {len(pred)}")
        baseline = None
        if args.source and args.target:
            sources, targets = list(read_lines(args.source)), list(read_lines(args.target))
            if not len(sources) == len(targets) == len(gold):
                raise InputError(f"{args.source}, {args.target} and {args.gold} must have as many lines "
                                 f"({len(sources)}, {len(targets)}, {len(gold)})")
            diagonal = [diagonal_links(len(s.split()), len(t.split())) for s, t in zip(sources, targets)]
            baseline = alignment_error_rate(gold, diagonal)
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = alignment_error_rate(gold, [possible for _, possible in pred])
    if args.json:
        print(json.dumps({**result, "diagonal": baseline}))
        return 0
    for name, scores in (("alignment", result), ("diagonal", baseline)):
        if scores:
            print(f"{name:<9}  AER {scores['aer']:.4f}  precision {scores['precision']:.4f}  "
                  f"recall {scores['recall']:.4f}  ({scores['links']} links, {len(gold)} sentences)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
