"""The command behind scripts/export_hf.py and `mt-export-hf`: a checkpoint as a Hugging Face transformers model
folder (mt/huggingface.py builds it), optionally pushed to the Hub."""

from __future__ import annotations

import argparse

from mt import cli
from mt.huggingface import export_hf


def main(argv: list[str] | None = None) -> int:
    """The command line of scripts/export_hf.py (and of `mt-export-hf`)."""
    parser = argparse.ArgumentParser(
        description="Export a trained checkpoint as a Hugging Face model folder that transformers' "
                    "AutoModelForSeq2SeqLM, AutoTokenizer and pipeline('translation') load.")
    parser.add_argument("checkpoint", help="a checkpoint of this toolkit, e.g. outputs/latest/checkpoints/best.pt")
    parser.add_argument("out_dir", help="the folder to write (config.json, model.safetensors, tokenizer, README.md)")
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it holds an earlier export")
    parser.add_argument("--push", metavar="REPO", help="then upload the folder to this Hub repository (user/name)")
    args = parser.parse_args(argv)
    with cli.one_line_errors():
        print(export_hf(args.checkpoint, args.out_dir, args.force, args.push))
    return 0
