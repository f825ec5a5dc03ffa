"""What the Hydra entry points share: the typed config from Hydra's, and one clear line for a user's mistake."""

from __future__ import annotations

import contextlib
import logging
import os
import sys

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from mt import schema
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
    except OSError as e:  # a write to stdout or a file no command expected to fail: still one line
        print(f"error: {e.filename or 'standard output'}: {e.strerror or e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def typed(cfg: DictConfig):
    """The dataclass instance behind a config validated against its schema: a required key left unset, a number
    out of its range or a key the schema does not know is one line (InputError)."""
    try:
        settings = OmegaConf.to_object(cfg)
    except MissingMandatoryValue as e:
        raise InputError(f"{e.full_key}: required, and not given (add {e.full_key}=...)") from None
    schema.check(settings)
    return settings


def run_dir() -> str:
    return HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else os.getcwd()
