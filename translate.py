"""Translate text with a trained checkpoint: `python translate.py checkpoint=CKPT [input=FILE] [output=FILE]`;
configs/translate.yaml lists the keys."""

import hydra

from mt import cli, config, translate

config.register()


@hydra.main(config_path="configs", config_name="translate", version_base="1.3")
def main(cfg) -> None:
    with cli.one_line_errors():
        translate.run(cli.typed(cfg))


if __name__ == "__main__":
    main()
