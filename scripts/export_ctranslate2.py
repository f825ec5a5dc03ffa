"""Export a trained checkpoint as a CTranslate2 model directory (needs the `deploy` extra):
`python scripts/export_ctranslate2.py CHECKPOINT OUT_DIR [--quantization int8] [--force]`."""

import sys

from mt.commands.export_ctranslate2 import main

if __name__ == "__main__":
    sys.exit(main())
