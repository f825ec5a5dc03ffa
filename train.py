"""Train a translation model: `python train.py [key=value ...]`; mt/config.py lists the keys and their defaults."""

from mt.allocator import restart_under_mimalloc

restart_under_mimalloc()  # first of all: the process starts again under mimalloc where it can (mt/allocator.py)

import hydra  # noqa: E402

from mt import cli, config, trainer  # noqa: E402

config.register()


@hydra.main(config_path="configs", config_name="train", version_base="1.3")
def main(cfg) -> None:
    with cli.one_line_errors():
        trainer.run(cli.typed(cfg), cli.run_dir())


if __name__ == "__main__":
    main()
