"""Word-align given sentence pairs with a trained checkpoint (forced decoding):
`python scripts/align.py checkpoint=CKPT source=FILE target=FILE output=FILE` (or `mt-align`); mt/config.py
(AlignConfig) types the keys."""

from mt.commands.align import main

if __name__ == "__main__":
    main()
