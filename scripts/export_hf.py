"""Export a trained checkpoint as a Hugging Face transformers model folder (needs the `hf` extra):
`python scripts/export_hf.py CHECKPOINT OUT_DIR [--force] [--push USER/NAME]`."""

import sys

from mt.commands.export_hf import main

if __name__ == "__main__":
    sys.exit(main())
