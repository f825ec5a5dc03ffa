"""Translate text with a trained checkpoint: `python translate.py checkpoint=CKPT [input=FILE] [output=FILE]`
(or `mt-translate`); mt/configs/translate.yaml lists the keys."""

from mt.commands.translate import main

if __name__ == "__main__":
    main()
