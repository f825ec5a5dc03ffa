"""Train a translation model: `python train.py [key=value ...]`; configs/train.yaml lists the keys."""

import hydra

from mt import cli, config, trainer

config.register()


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg) -> None:
    with cli.one_line_errors():
        trainer.run(cli.typed(cfg), cli.run_dir())


if __name__ == "__main__":
    main()
