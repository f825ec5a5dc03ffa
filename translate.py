"""Translate text files with a trained checkpoint. Not built yet: batched beam search, n-best lists and
alignment dumps arrive with the translate issue; until then training reports dev and test BLEU itself."""

import sys

if __name__ == "__main__":
    sys.exit("translate.py is not implemented yet: train.py writes dev/test BLEU to results.json in the run directory")
