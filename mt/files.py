"""Reading text files line by line with errors that name the file and line; opening outputs; writing files
atomically."""

from __future__ import annotations

import contextlib
import gzip
import os
import shutil
import sys
import zipfile
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
    """A UTF-8 text file to write, its folder made if missing ("-": stdout; None: none), closed with `stack`. A
    regular file is written beside itself and renamed over it when `stack` closes without an error, so a run that
    fails leaves the previous file as it was; a special file (/dev/null, a terminal) is written directly."""
    if name is None:
        return None
    if name == "-":
        return sys.stdout
    return stack.enter_context(_output(Path(name)))


@contextlib.contextmanager
def _output(path: Path) -> Iterator[TextIO]:
    if path.is_dir():
        raise InputError(f"{path}: is a folder, not a file to write")
    if path.exists() and not path.is_file():  # a device or a pipe: there is nothing to rename over
        try:
            with open(path, "w", encoding="utf-8") as f:
                yield f
        except OSError as e:
            raise InputError(f"{path}: could not write it ({e.strerror or e})") from None
        return
    with atomic(path, "w") as f:
        yield f


def same_file(a: Path, b: Path) -> bool:
    """Whether two paths name one file: after links and relative parts, or as hard links of one inode."""
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_outputs(outputs: dict[str, Optional[str]], inputs: dict[str, Optional[str]]) -> None:
    """Refuse, in one line, an output (key -> path; None or - for none or stdout) that is one of the inputs, another
    output, or a checkpoint: nothing a command writes may destroy what it reads or a finished model."""
    named = {key: Path(path) for key, path in outputs.items() if path not in (None, "-")}
    sources = {key: Path(path) for key, path in inputs.items() if path not in (None, "-")}
    seen: dict[str, Path] = {}
    for key, path in named.items():
        for other, source in sources.items():
            if same_file(path, source):
                raise InputError(f"{key}={path} is the input {other}={source}: it would be overwritten; choose "
                                 "another output file")
        for other, earlier in seen.items():
            if same_file(path, earlier):
                raise InputError(f"{key}={path} is also {other}: two outputs cannot share one file")
        if path.is_file() and zipfile.is_zipfile(path):
            raise InputError(f"{key}={path} holds a checkpoint (or another zip archive): it would be overwritten; "
                             "choose another output file")
        seen[key] = path


@contextlib.contextmanager
def atomic(path: str | os.PathLike, mode: str = "wb"):
    """A file to write (`mode` "wb", or "w" for UTF-8 text) that takes `path`'s place only when the block ends
    without an error: it is written to a temporary file beside it, flushed to disk, then renamed over `path`.

    A crash at any moment leaves either the old file or the new one, never a truncated one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{PARTIAL_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a file-size limit, no permission: the old file is untouched
        raise InputError(
            f"{path}: could not write it ({e.strerror or e}); the previous version, if any, is kept") from None
    finally:
        tmp.unlink(missing_ok=True)


def write_atomically(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> None:
    """Write through `write(file)` to `path` atomically (see `atomic`)."""
    with atomic(path) as f:
        write(f)


def remove_partial_writes(folder: str | os.PathLike) -> None:
    """Delete the temporary files of writes that a killed process never finished."""
    for partial in Path(folder).glob(f".*{PARTIAL_SUFFIX}"):
        partial.unlink(missing_ok=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_atomically(path, lambda f: f.write(text.encode()))


def point_link(link: str | os.PathLike, target: str | os.PathLike) -> None:
    """Make `link` a symbolic link to `target` (relative where it can be), replacing an older link atomically."""
    link, target = Path(link), Path(target)
    try:
        relative = os.path.relpath(target.resolve(), link.parent.resolve())
    except ValueError:  # another drive (Windows)
        relative = str(target.resolve())
    temporary = link.with_name(link.name + PARTIAL_SUFFIX)
    temporary.unlink(missing_ok=True)
    os.symlink(relative, temporary)
    os.replace(temporary, link)


@contextlib.contextmanager
def exclusive(folder: str | os.PathLike, what: str):
    """Hold `folder` for this process alone while the block runs (an advisory lock on folder/.lock, which the
    system releases when the process ends, however it ends); another process holding it is one line."""
    import fcntl  # POSIX only, as the allocator and signals here are

    path = Path(folder) / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise InputError(f"{folder}: in use by {holder}; wait for it to end, or choose another folder") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{what} (pid {os.getpid()})\n")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def write_folder(out_dir: str | os.PathLike, fill: Callable[[Path], None], kind: str, marker: str, force: bool,
                 keep: str | os.PathLike) -> Path:
    """Write a folder of `kind` (an export: a CTranslate2 model, a Hugging Face model) at `out_dir` by calling
    `fill` on an empty staging folder beside it, then renaming that into place: a failed write leaves no half
    folder, and an earlier export is replaced only with `force`, and only if it holds `marker` (never a folder of
    something else, such as "."). `keep` (the checkpoint exported) may not lie inside it."""
    out_dir, keep = Path(out_dir).resolve(), Path(keep).resolve()
    if out_dir == keep or out_dir in keep.parents:
        raise InputError(f"{out_dir}: holds the checkpoint {keep}, which replacing it would destroy; choose "
                         "another output folder")
    if out_dir.exists():
        if not out_dir.is_dir() or (not (out_dir / marker).is_file() and any(out_dir.iterdir())):
            raise InputError(f"{out_dir}: already exists and is not {kind}; choose another output folder")
        if not force:
            raise InputError(f"{out_dir}: already exists; pass --force to replace it")
    staging = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.tmp")
    try:
        staging.mkdir(parents=True)
        fill(staging)
        earlier = out_dir.with_name(f".{out_dir.name}.{os.getpid()}.old")
        if out_dir.exists():
            out_dir.rename(earlier)  # kept until the new export is in place
        staging.rename(out_dir)
        shutil.rmtree(earlier, ignore_errors=True)
    except OSError as e:  # a full disk, a file-size limit, no permission: an earlier export stays if it can
        raise InputError(f"{out_dir}: could not write it ({e.strerror or e})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir
