"""What the Hydra entry points share: the typed config from Hydra's, and one clear line for a user's mistake."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from mt.files import InputError
from mt.interrupt import Interrupted


@contextlib.contextmanager
def one_line_errors():
    """A user's mistake (InputError) becomes one line on stderr and exit status 2, not a traceback; a stop on a
    signal, one line and the status a shell expects (130 for Ctrl-C)."""
    try:
        yield
    except InputError as e:
        logging.getLogger("mt").debug("input error", exc_info=True)
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except Interrupted as e:
        print(str(e), file=sys.stderr)
        sys.exit(e.exit_status)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def typed(cfg: DictConfig):
    """The dataclass instance behind a config validated against its schema."""
    return OmegaConf.to_object(cfg)


def run_dir() -> str:
    return HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else os.getcwd()
