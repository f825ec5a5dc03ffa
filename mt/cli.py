"""What the Hydra entry points share: the typed config from Hydra's, and one clear line for a user's mistake."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys

import hydra
from hydra import compose, initialize_config_module
from hydra._internal.utils import get_args_parser  # the parser hydra.main reads the command line with
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue

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


def hydra_command(config_name: str):
    """hydra.main over mt/configs/`config_name`.yaml, with the command line's overrides tried first: one Hydra
    cannot apply is refused in one line, as the schema's own refusals are, where Hydra would print several. The
    task's own InputError is one line too."""

    def decorate(task):
        def task_in_one_line(cfg) -> None:
            with one_line_errors():
                task(cfg)

        task_in_one_line.__module__ = task.__module__  # hydra.main reads config_path from it: mt/commands/
        run_by_hydra = hydra.main(config_path="../configs", config_name=config_name,
                                  version_base="1.3")(task_in_one_line)

        @functools.wraps(task)
        def main() -> None:
            with one_line_errors():
                refuse_bad_overrides(config_name, sys.argv[1:])
            run_by_hydra()

        return main

    return decorate


def refuse_bad_overrides(config_name: str, argv: list[str]) -> None:
    """Compose the configuration as hydra.main will; InputError naming the override or key it cannot apply.
    Sweeps (-m), other config folders and Hydra's own flags (--help, --cfg, ...) are left to Hydra."""
    args, _ = get_args_parser().parse_known_args(argv)
    if (args.multirun or args.help or args.hydra_help or args.cfg or args.info or args.shell_completion
            or args.config_path or args.config_dir or args.experimental_rerun):
        return
    parser = OverridesParser.create()
    for override in args.overrides:
        try:
            parser.parse_overrides([override])
        except OverrideParseException as e:
            raise InputError(f"{override}: not an override Hydra can read ({str(e).splitlines()[0]})") from None
    try:
        with initialize_config_module("mt.configs", version_base="1.3"):
            compose(args.config_name or config_name, overrides=args.overrides)
    except MissingConfigException as e:
        group, _, name = (e.missing_cfg_file or "").rpartition("/")
        choices = f" (one of {', '.join(e.options)})" if e.options else ""
        raise InputError(f"{group}={name}: no such configuration{choices}" if group else
                         str(e).splitlines()[0]) from None
    except ConfigCompositionException as e:
        cause = e.__cause__
        if isinstance(cause, (ConfigAttributeError, ConfigKeyError)):
            raise InputError(f"{cause.full_key}: no such key") from None
        where = getattr(cause, "full_key", None)
        raise InputError(f"{where}: {str(cause).splitlines()[0]}" if where else str(e).splitlines()[0]) from None


def run_dir() -> str:
    return HydraConfig.get().runtime.output_dir if HydraConfig.initialized() else os.getcwd()
