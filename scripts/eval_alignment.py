"""Alignment error rate of predicted word alignments against a gold standard, both in Pharaoh form:
`python scripts/eval_alignment.py GOLD PRED [--source SRC --target TGT]`; --help says more."""

import sys

from mt.commands.eval_alignment import main

if __name__ == "__main__":
    sys.exit(main())
