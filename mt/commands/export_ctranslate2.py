"""The command behind scripts/export_ctranslate2.py and `mt-export-ctranslate2`: a checkpoint as a CTranslate2
model directory (mt/ctranslate2_export.py builds it)."""

from __future__ import annotations

import argparse

from mt import cli
from mt.ctranslate2_export import QUANTIZATIONS, export_ctranslate2


def main(argv: list[str] | None = None) -> int:
    """The command line of scripts/export_ctranslate2.py (and of `mt-export-ctranslate2`)."""
    parser = argparse.ArgumentParser(description="Export a trained checkpoint as a CTranslate2 model directory.")
    parser.add_argument("checkpoint", help="a checkpoint of this toolkit, e.g. RUN/checkpoints/best.pt")
    parser.add_argument("out_dir", help="the CTranslate2 model directory to write (with spm.model beside it)")
    parser.add_argument("--quantization", default="float32", choices=QUANTIZATIONS,
                        help="weight type of the exported model (default: float32)")
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it holds an earlier export")
    args = parser.parse_args(argv)
    with cli.one_line_errors():
        print(export_ctranslate2(args.checkpoint, args.out_dir, args.quantization, args.force))
    return 0
