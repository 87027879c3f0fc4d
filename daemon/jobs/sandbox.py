"""What the built-in jobs may touch (rule 9): files only below the operator's export
root, never through a symlink; relations only on the operator's allow-list, never the
catalogs or chunkd's own tables. HAPI/Smile's $export never lets a client pick a path
or a table; a parameter here is at most a name inside the box.

`configure` is called by the daemon at start with its Config (CHUNKD_EXPORT_DIR,
CHUNKD_EXPORT_TABLES); the jobs read `current()`."""
from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterable
from pathlib import Path

import msgspec

from chunkd import ParameterError, PermanentError
from storage.tables import Table

NEVER_SCHEMAS = frozenset({"pg_catalog", "information_schema", "pg_toast"})
OWN_PREFIX = "chunkd_"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@+=-]{0,127}$")


class Sandbox(msgspec.Struct, frozen=True):
    export_dir: str
    tables: tuple[str, ...] = ()


_current = Sandbox(export_dir=os.path.join(".chunkd", "exports"))


def configure(export_dir: str, tables: Iterable[str]) -> None:
    global _current
    _current = Sandbox(export_dir=os.path.abspath(export_dir), tables=tuple(tables))


def current() -> Sandbox:
    return _current


# ---------------------------------------------------------------- relations
def relation_allowed(schema: str, name: str, allowed: Iterable[str]) -> bool:
    if schema in NEVER_SCHEMAS or schema.startswith("pg_") or name.startswith(OWN_PREFIX):
        return False
    return any(entry in (f"{schema}.{name}", f"{schema}.*") for entry in allowed)


def check_relation(schema: str, name: str, path: str) -> None:
    if not relation_allowed(schema, name, current().tables):
        raise ParameterError(f"{schema}.{name} is not on the operator's allow-list (CHUNKD_EXPORT_TABLES); "
                             "the catalogs and chunkd's own tables never are", path)


def check_table(t: Table, path: str) -> None:
    check_relation(t.schema, t.name, path)


# ---------------------------------------------------------------- files
def output_parts(raw: str) -> list[str]:
    """The `output` parameter as path segments below the export root. Also accepted: an
    absolute path or file:/// URL that lies below the root (it is made relative)."""
    root = Path(current().export_dir)
    text = raw
    if text.startswith("file://"):
        text = text.removeprefix("file://").removeprefix("localhost")
    if text.startswith("/"):
        try:
            text = str(Path(os.path.normpath(text)).relative_to(root))
        except ValueError:
            raise ParameterError(f"output must be a directory name below the export root {root} "
                                 "(CHUNKD_EXPORT_DIR), e.g. \"nightly/2026-12-03\"", "$.output") from None
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if not parts or any(not _SEGMENT.match(p) for p in parts) or len(parts) > 8:
        raise ParameterError("output must be a relative directory name of up to 8 segments of letters, digits "
                             "and _.@+=- (no '..', no leading dot), below CHUNKD_EXPORT_DIR", "$.output")
    return parts


def output_url(parts: list[str], name: str) -> str:
    return Path(current().export_dir, *parts, name).as_uri()


def open_output(parts: list[str], create: bool) -> int:
    """A directory descriptor for the output directory, walked one segment at a time with
    O_NOFOLLOW from the root: a symlink anywhere below the root is refused, never followed."""
    root = current().export_dir
    if create:
        os.makedirs(root, mode=0o750, exist_ok=True)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts:
            if create:
                try:
                    os.mkdir(part, 0o750, dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            except OSError as e:
                raise PermanentError(f"output directory segment {part!r} cannot be opened as a plain directory "
                                     f"(symlinks are never followed): {e.strerror}") from None
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_file(dir_fd: int, name: str, data: bytes) -> None:
    """`data` to `name` in the directory: an unpredictable temporary name created with
    O_EXCL|O_NOFOLLOW, fsynced, then renamed over `name` (a rename replaces a symlink
    planted at `name`, it does not write through it)."""
    tmp = f".{name}.tmp-{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o640, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dir_fd)
        except OSError:
            pass
        raise


def remove_stale_temps(dir_fd: int) -> None:
    """Temporary files of attempts that died before their rename (unlink never follows)."""
    for entry in os.listdir(dir_fd):
        if entry.startswith(".") and ".tmp-" in entry:
            try:
                os.unlink(entry, dir_fd=dir_fd)
            except OSError:
                pass
