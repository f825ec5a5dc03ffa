"""Export a trained checkpoint as a CTranslate2 model directory (needs the `deploy` extra):
`python scripts/export_ctranslate2.py CHECKPOINT OUT_DIR [--quantization int8] [--force]`."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mt import cli, export  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", help="a checkpoint of this toolkit, e.g. RUN/checkpoints/best.pt")
    parser.add_argument("out_dir", help="the CTranslate2 model directory to write (with spm.model beside it)")
    parser.add_argument("--quantization", default="float32", choices=export.QUANTIZATIONS,
                        help="weight type of the exported model (default: float32)")
    parser.add_argument("--force", action="store_true", help="replace OUT_DIR if it holds an earlier export")
    args = parser.parse_args()
    with cli.one_line_errors():
        out_dir = export.export_ctranslate2(args.checkpoint, args.out_dir, args.quantization, args.force)
    print(out_dir)


if __name__ == "__main__":
    main()
