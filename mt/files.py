"""Reading text files line by line with errors that name the file and line; opening outputs; writing files
atomically."""

from __future__ import annotations

import gzip
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import BinaryIO, Optional, TextIO

PARTIAL_SUFFIX = ".partial"


class InputError(Exception):
    """A problem the user can fix (a file, an option, a full disk); its message is the one line we print."""


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_lines(path: str | os.PathLike) -> Iterator[str]:
    """Yield the lines of a UTF-8 text file (plain or .gz; - is stdin) without their line endings."""
    if str(path) == "-":
        yield from _decoded(sys.stdin.buffer, "<stdin>")
        return
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with _open_binary(path) as f:
        yield from _decoded(f, str(path))


def _decoded(lines: BinaryIO, name: str) -> Iterator[str]:
    for number, raw in enumerate(lines, start=1):
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError as e:
            raise InputError(f"{name}:{number}: not UTF-8 (byte {e.start}); convert it to UTF-8") from None


def read_parallel(src_path: str, tgt_path: str) -> Iterator[tuple[str, str]]:
    """Yield line pairs of two line-parallel files; stop with both names and counts if they differ."""
    src_lines, tgt_lines = read_lines(src_path), read_lines(tgt_path)
    count = 0
    for src in src_lines:
        tgt = next(tgt_lines, None)
        if tgt is None:
            raise InputError(_count_mismatch(src_path, count + 1 + sum(1 for _ in src_lines), tgt_path, count))
        count += 1
        yield src, tgt
    extra = sum(1 for _ in tgt_lines)
    if extra:
        raise InputError(_count_mismatch(src_path, count, tgt_path, count + extra))


def _count_mismatch(src_path: str, src_count: int, tgt_path: str, tgt_count: int) -> str:
    return (f"{src_path} has {src_count} lines but {tgt_path} has {tgt_count}: "
            "parallel files must have one sentence per line, line for line")


def open_output(stack: ExitStack, name: Optional[str]) -> Optional[TextIO]:
    """A UTF-8 text file to write, its folder made if missing ("-": stdout; None: none), closed with `stack`."""
    if name is None:
        return None
    if name == "-":
        return sys.stdout
    try:
        Path(name).parent.mkdir(parents=True, exist_ok=True)
        return stack.enter_context(open(name, "w", encoding="utf-8"))
    except OSError as e:
        raise InputError(f"{name}: cannot write it ({e.strerror or e})") from None


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write through `write(file)` to a temporary file, flush it to disk, then rename it over `path`.

    A crash at any moment leaves either the old file or the new one, never a truncated one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a file-size limit, no permission: the old file is untouched
        raise InputError(
            f"{path}: could not write it ({e.strerror or e}); the previous version, if any, is kept") from None
    finally:
        tmp.unlink(missing_ok=True)


def remove_partial_writes(folder: str | os.PathLike) -> None:
    """Delete the temporary files of writes that a killed process never finished."""
    for partial in Path(folder).glob(f".*{PARTIAL_SUFFIX}"):
        partial.unlink(missing_ok=True)
