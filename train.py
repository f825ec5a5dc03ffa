"""Train a translation model: `python train.py [key=value ...]` (or `mt-train`); mt/config.py lists the keys."""

from mt.allocator import restart_under_mimalloc

restart_under_mimalloc()  # before torch is imported: the process starts again under mimalloc where it can

from mt.commands.train import main  # noqa: E402

if __name__ == "__main__":
    main()
