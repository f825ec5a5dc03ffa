"""Word-align given sentence pairs with a trained checkpoint (forced decoding):
`python scripts/align.py checkpoint=CKPT source=FILE target=FILE output=FILE`; mt/config.py (AlignConfig) types the
keys."""

import hydra

from mt import cli, config, force_align

config.register()


@hydra.main(config_path="../configs", config_name="align", version_base="1.3")
def main(cfg) -> None:
    with cli.one_line_errors():
        force_align.run(cli.typed(cfg))


if __name__ == "__main__":
    main()
