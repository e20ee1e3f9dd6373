"""Run folders that never lose or destroy data: atomic writes, a manifest, a lock.

Every file memspace writes goes through :func:`write_atomic`: the bytes go to a
temporary sibling (``NAME.memspace-tmp``), are flushed and fsynced, and the temporary
is renamed over ``NAME`` (an atomic step on POSIX file systems), then the folder is
fsynced. A kill or a full disk at any moment leaves either the old file or the new one,
never a truncated one.

A :class:`RunFolder` is a folder memspace owns:

- ``.memspace-run`` (the manifest, JSON): the run's kind (``train``, ``demo``,
  ``measure``), the configuration it was started with, and every file and subfolder
  memspace created there, registered *before* it is written. ``overwrite`` removes those
  and nothing else; a folder with files but no manifest is not a memspace run and is
  refused, naming what it holds.
- ``.memspace-lock``: an OS file lock (``flock``) held for the run's life, with the
  holder's PID inside, so a second process on the same folder gets one clear line.
- Reopening a run compares the stored configuration with the new one and refuses,
  naming every differing option, rather than mixing two configurations in one run.

All OS errors on writes (no space left, permission denied, a missing parent) become a
:class:`~memspace.MemspaceError` naming the path; what was written before stays valid.

A run folder is a boundary, since people share them (a colleague's results, a
downloaded artefact) and a crafted one must not turn ``--overwrite`` against the rest of
the disk:

- every manifest entry is a plain relative path (:func:`entry_parts`: no ``..``, no
  absolute path, no empty or ``.`` part, never one of memspace's own names), and no
  component of it may be a symbolic link; this is checked when the manifest is read, for
  nested run folders too, and a folder that fails is refused by name with nothing removed;
- removal never follows a link: each entry is reached through folder descriptors opened
  with ``O_NOFOLLOW``, files and links are unlinked by name, only empty folders removed;
- the lock is opened with ``O_NOFOLLOW`` and must be a plain file with one name;
  temporaries are created with ``O_EXCL | O_NOFOLLOW``; a result that is a link is not
  written; files read back (checkpoints, cells, metrics) go through :func:`read_regular`,
  which refuses links, FIFOs and devices.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import stat
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ._errors import MemspaceError

__all__ = [
    "MANIFEST",
    "LOCK",
    "TMP_SUFFIX",
    "RunFolder",
    "crash_point",
    "entry_parts",
    "is_own_name",
    "read_manifest",
    "read_regular",
    "write_atomic",
    "write_json",
]

MANIFEST = ".memspace-run"
LOCK = ".memspace-lock"
TMP_SUFFIX = ".memspace-tmp"
_MANIFEST_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 2**20
"""The largest manifest read (a zoo of 100,000 models lists about 12 MB)."""
MAX_NESTING = 8
"""How deep run folders may nest inside one another (the demo nests two levels)."""
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def crash_point(name: str) -> None:
    """Signal this process at a named step, for the crash and interruption tests.

    Active only when the environment variable ``MEMSPACE_TEST_CRASH`` holds ``NAME:K`` or
    ``NAME:K:ACTION`` (several separated by commas): the K-th time (1-based) the step
    ``NAME`` is reached in a process, that process sends itself SIGKILL (``KILL``, the
    default), SIGTERM (``TERM``) or SIGINT (``INT``) — a real signal at exactly that moment,
    which timed kills hit only by luck — or stops there for good (``HANG``: a worker that
    never finishes).
    """
    specs = os.environ.get("MEMSPACE_TEST_CRASH")
    if not specs:
        return
    for spec in specs.split(","):
        step, _, rest = spec.partition(":")
        if step != name:
            continue
        count, _, action = rest.partition(":")
        counts = crash_point.__dict__.setdefault("counts", {})
        counts[name] = counts.get(name, 0) + 1
        if counts[name] != int(count):
            return
        if action == "HANG":
            threading.Event().wait()
        os.kill(os.getpid(), getattr(signal, f"SIG{action or 'KILL'}"))


def _os_error(action: str, path: Path, error: OSError) -> MemspaceError:
    reason = error.strerror or type(error).__name__
    return MemspaceError(f"cannot {action} {path}: {reason}")


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open folders; the rename itself is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _refuse_link(path: Path, what: str) -> None:
    """A :class:`MemspaceError` when ``path`` is a symbolic link (memspace never follows one)."""
    if path.is_symlink():
        raise MemspaceError(
            f"refusing to write {what} {path}: it is a symbolic link (memspace writes only "
            "plain files it created, never through a link)"
        )


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically: temporary sibling, flush, fsync, rename.

    Neither ``path`` nor its temporary may be a symbolic link (refused, nothing written);
    the temporary is created afresh (``O_EXCL | O_NOFOLLOW``), so a stale one that is a
    hard link to another file is unlinked, never written into.

    Raises:
        MemspaceError: naming ``path`` for any OS error (ENOSPC, EACCES, a missing
            parent) or a link; the previous content of ``path``, if any, is untouched
            and the temporary is removed.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.with_name(path.name + TMP_SUFFIX)
    _refuse_link(path, "the file")
    _refuse_link(tmp, "the temporary")
    try:
        if os.path.lexists(tmp):
            # A stale temporary of a killed run: its name only, never what it points at
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC, 0o644)
        with open(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        crash_point("before-rename")
        os.replace(tmp, path)
    except OSError as error:
        try:
            if not tmp.is_symlink():
                tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise _os_error("write", path, error) from None
    crash_point("after-rename")
    _fsync_folder(path.parent)
    return path


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    """:func:`write_atomic` of ``obj`` as JSON."""
    return write_atomic(path, json.dumps(obj, indent=indent))


def read_regular(path: str | Path, what: str = "file", max_bytes: int | None = None) -> bytes:
    """The bytes of ``path``, a plain file that is not a link, read without following one.

    A run folder may come from someone else: a link in it (to ``/dev/zero``, to a file
    outside) or a FIFO is refused rather than read, and ``max_bytes`` bounds the size.

    Raises:
        MemspaceError: naming ``what`` and ``path`` for a link, a non-regular file, a
            file over ``max_bytes``, or an OS error.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0))
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise MemspaceError(f"refusing to read {what} {path}: it is a symbolic link") from None
        raise _os_error("read", path, error) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise MemspaceError(f"refusing to read {what} {path}: it is not a regular file")
        if max_bytes is not None and info.st_size > max_bytes:
            raise MemspaceError(
                f"refusing to read {what} {path}: {info.st_size} bytes is over the bound of "
                f"{max_bytes} bytes"
            )
        chunks, left = [], info.st_size
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 24))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)
    except OSError as error:
        raise _os_error("read", path, error) from None
    finally:
        os.close(fd)


# -- manifest entries: plain relative paths that stay inside the folder
# ------------------------------------------


def is_own_name(name: str) -> bool:
    """Whether ``name`` (one path component) is one of memspace's bookkeeping files."""
    return name in (MANIFEST, LOCK) or name.endswith(TMP_SUFFIX)


def entry_parts(name: Any) -> tuple[str, ...]:
    """The components of a manifest entry, checked to be a plain relative path.

    Raises:
        MemspaceError: saying why ``name`` is not one: not a non-empty string, absolute, with
            an empty, ``.`` or ``..`` component, a NUL byte, or a component that is one of
            memspace's own files (manifest, lock, temporaries).
    """
    if not isinstance(name, str) or not name:
        raise MemspaceError(f"{name!r} is not a non-empty file name")
    if "\x00" in name or len(name) > 4096:
        raise MemspaceError(f"{name[:80]!r} is not a file name")
    if name.startswith("/") or os.path.isabs(name) or (os.sep != "/" and os.sep in name):
        raise MemspaceError(f"{name!r} is an absolute path")
    parts = tuple(name.split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise MemspaceError(
                f"{name!r} is not a plain relative path (it has a {part or 'empty'!r} component)"
            )
        if is_own_name(part):
            raise MemspaceError(f"{name!r} names memspace's own bookkeeping file {part!r}")
    return parts


def _link_in(root: Path, parts: tuple[str, ...]) -> Path | None:
    """The first component of ``root/parts`` that is a symbolic link, or None."""
    node = root
    for part in parts:
        node = node / part
        if node.is_symlink():
            return node
        if not node.exists():
            return None
    return None


def _check_entries(root: Path, files: Iterable[str]) -> None:
    """Refuse ``root`` when an entry of its manifest is not a plain path inside it without links."""
    for name in files:
        try:
            parts = entry_parts(name)
        except ValueError as error:
            raise MemspaceError(
                f"refusing to use {root}: its manifest {root / MANIFEST} is refused: {error}; "
                "nothing "
                "was changed (a run folder from elsewhere may be crafted: move it aside)"
            ) from None
        link = _link_in(root, parts)
        if link is not None:
            raise MemspaceError(
                f"refusing to use {root}: its manifest entry {name!r} goes through the symbolic "
                f"link {link}; nothing was changed (memspace never follows links in a run folder)"
            )


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    file = folder / MANIFEST
    if not os.path.lexists(file):
        return None
    damaged = (
        f"{file} is not a memspace manifest (written by an older memspace, or damaged); "
        "move the folder aside and start a new run"
    )
    try:
        manifest = json.loads(
            read_regular(file, "the manifest", MAX_MANIFEST_BYTES).decode("utf-8")
        )
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise MemspaceError(damaged) from None
    if (
        not isinstance(manifest, dict)
        or not isinstance(manifest.get("kind"), str)
        or not isinstance(manifest.get("files"), list)
        or not isinstance(manifest.get("config", {}), dict)
    ):
        raise MemspaceError(damaged)
    return manifest


def read_manifest(folder: str | Path) -> dict[str, Any] | None:
    """The checked manifest of ``folder`` (None when it has none), without locking it.

    Raises:
        MemspaceError: a damaged manifest, a link, or an entry that is not a plain
            relative path inside the folder.
    """
    folder = Path(folder)
    manifest = _read_manifest(folder)
    if manifest is not None:
        _check_entries(folder, manifest["files"])
    return manifest


def _foreign(folder: Path, ours: Iterable[str]) -> list[str]:
    """Entries of ``folder`` that memspace did not write (temporaries of our files excluded).

    memspace's own names count as foreign when they are links or not plain files: a
    folder holding only a planted ``.memspace-lock`` link is not a memspace run.
    """
    known = {MANIFEST, LOCK, MANIFEST + TMP_SUFFIX}
    for name in ours:
        known |= {name, name + TMP_SUFFIX}
    foreign = []
    for entry in folder.iterdir():
        if entry.name not in known:
            foreign.append(entry.name)
        elif entry.name in (MANIFEST, LOCK, MANIFEST + TMP_SUFFIX) and (
            entry.is_symlink() or not entry.is_file()
        ):
            foreign.append(f"{entry.name} (a link or not a plain file)")
    return sorted(foreign)


def _describe(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _format_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``name: stored → current`` for every key whose value differs (missing counts)."""
    missing = object()
    return [
        f"{key} {_format_value(stored.get(key, '(unset)'))} → "
        f"{_format_value(current.get(key, '(unset)'))}"
        for key in sorted(set(stored) | set(current))
        if stored.get(key, missing) != current.get(key, missing)
    ]


class _Lock:
    """An exclusive, non-blocking OS lock on ``folder/.memspace-lock`` holding our PID.

    The lock file is opened without following links and must be a plain file with one
    name: a planted link or hard link would otherwise let the PID write truncate a file
    elsewhere.
    """

    def __init__(self, folder: Path):
        self.file = folder / LOCK
        try:
            self._fd = os.open(
                self.file,
                os.O_RDWR | os.O_CREAT | _NOFOLLOW | _CLOEXEC | getattr(os, "O_NONBLOCK", 0),
                0o644,
            )
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise MemspaceError(
                    f"refusing to lock {folder}: its {LOCK} is a symbolic link (memspace never "
                    "writes through links); move the folder aside"
                ) from None
            raise _os_error("lock", folder, error) from None
        info = os.fstat(self._fd)
        if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
            os.close(self._fd)
            self._fd = None
            raise MemspaceError(
                f"refusing to lock {folder}: its {LOCK} is not a plain file of its own "
                f"({'a hard link' if stat.S_ISREG(info.st_mode) else 'not a regular file'}); "
                "move the folder aside"
            )
        try:
            _lock_fd(self._fd)
        except BlockingIOError:
            os.close(self._fd)
            self._fd = None
            holder = _read_pid(self.file)
            raise MemspaceError(
                f"run folder {folder} is in use by another memspace process"
                f"{f' (PID {holder})' if holder else ''}; wait for it to finish "
                "or choose another --out"
            ) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"{os.getpid()}\n".encode())

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None


def _lock_fd(fd: int) -> None:
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as error:
            raise BlockingIOError(errno.EAGAIN, "locked") from error
        return
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)


def _read_pid(file: Path) -> int | None:
    try:
        return int(read_regular(file, "the lock", 64).decode().strip())
    except (MemspaceError, ValueError, UnicodeDecodeError):
        return None


class RunFolder:
    """A locked memspace run folder with a manifest of what memspace wrote (module doc).

    Use :meth:`open` (or ``with RunFolder.open(...) as run:``); register each file with
    :meth:`path` before writing it, or write through :meth:`write`/:meth:`write_json`.

    Attributes:
        root: the folder.
        kind: ``"train"``, ``"demo"``, ``"measure"``, ...
        config: the configuration the run was started with.
        resumed: True when the folder already held this run's files (same configuration).
    """

    def __init__(self, root: Path, manifest: dict[str, Any], lock: _Lock, resumed: bool):
        self.root, self._manifest, self._lock, self.resumed = root, manifest, lock, resumed

    @property
    def kind(self) -> str:
        return self._manifest["kind"]

    @property
    def config(self) -> dict[str, Any]:
        return dict(self._manifest.get("config", {}))

    @property
    def files(self) -> list[str]:
        return list(self._manifest["files"])

    @classmethod
    def open(
        cls,
        root: str | Path,
        *,
        kind: str,
        config: Mapping[str, Any] | None = None,
        overwrite: bool = False,
        ignore: Iterable[str] = (),
        finished: str | None = None,
    ) -> RunFolder:
        """Create, resume or (with ``overwrite``) reset the run folder ``root``, locked.

        Args:
            root: the folder (created with its parents when missing).
            kind: what runs here; a folder of another kind is refused.
            config: JSON-serialisable options of the run; a resume with different values
                is refused, naming each (keys in ``ignore`` may change between runs).
            overwrite: remove what memspace wrote there before (never anything else) and
                start a new run.
            ignore: configuration keys that may change on resume (e.g. the epoch count).
            finished: the file that marks a finished run (written last); such a run is
                refused without ``overwrite`` instead of being resumed.

        Raises:
            MemspaceError: a path that is not a folder, a folder that is not a memspace
                run, one of another kind, in use by another process, or started with
                another configuration; an OS error naming the path.
        """
        root = Path(root)
        config = json.loads(json.dumps(dict(config or {})))  # what a later reader will see
        if root.exists() and not root.is_dir():
            raise MemspaceError(f"output path {root} exists and is not a folder")
        manifest = read_manifest(root) if root.exists() else None
        if root.exists() and manifest is None:
            foreign = _foreign(root, ())
            if foreign:
                raise MemspaceError(
                    f"refusing to use {root}: it is not a memspace run folder (it holds "
                    f"{_describe(foreign)}); choose another --out"
                )
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise _os_error("create", root, error) from None
        lock = _Lock(root)
        try:
            return cls._open_locked(root, kind, config, overwrite, set(ignore), finished, lock)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def attach(cls, root: str | Path) -> RunFolder:
        """Lock an existing run folder of any kind and configuration (to add a file to it).

        Raises:
            MemspaceError: when ``root`` is not a memspace run folder or is in use.
        """
        root = Path(root)
        if not root.is_dir() or read_manifest(root) is None:
            raise MemspaceError(f"{root} is not a memspace run folder")
        lock = _Lock(root)
        try:
            manifest = read_manifest(root)  # again, now that the folder is ours
            if manifest is None:
                raise MemspaceError(f"{root} is not a memspace run folder")
            return cls(root, manifest, lock, True)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_locked(
        cls,
        root: Path,
        kind: str,
        config: dict,
        overwrite: bool,
        ignore: set[str],
        finished: str | None,
        lock: _Lock,
    ) -> RunFolder:
        manifest = read_manifest(root)  # again, now that the folder is ours
        if manifest is None:
            foreign = _foreign(root, ())
            if foreign:
                raise MemspaceError(
                    f"refusing to use {root}: it is not a memspace run folder (it holds "
                    f"{_describe(foreign)}); choose another --out"
                )
        elif manifest["kind"] != kind:
            raise MemspaceError(
                f"{root} holds a memspace {manifest['kind']} run, not a {kind} run; "
                "choose another --out"
            )
        elif overwrite:
            _remove_ours(root, manifest)
            manifest = None
        elif finished is not None and (root / finished).exists():
            raise MemspaceError(
                f"output folder {root} already exists and holds a finished {kind} run; "
                "pass --overwrite to replace it or choose another --out"
            )
        else:
            stored = {k: v for k, v in manifest.get("config", {}).items() if k not in ignore}
            differences = config_differences(
                stored, {k: v for k, v in config.items() if k not in ignore}
            )
            if differences:
                raise MemspaceError(
                    f"{root} holds a run started with other options ({'; '.join(differences)}); "
                    "rerun with the same options to resume it, or pass --overwrite or another "
                    "--out to start a new run"
                )
            manifest["config"] = {**manifest.get("config", {}), **config}
            resumed = any((root / name).exists() for name in manifest["files"])
            folder = cls(root, manifest, lock, resumed)
            folder._save_manifest()
            return folder
        folder = cls(
            root,
            {"memspace_manifest": _MANIFEST_VERSION, "kind": kind, "config": config, "files": []},
            lock,
            False,
        )
        folder._save_manifest()
        return folder

    def _save_manifest(self) -> None:
        write_json(self.root / MANIFEST, self._manifest)

    def path(self, name: str) -> Path:
        """Register ``name`` (a file or subfolder relative to the run) and return its path.

        Raises:
            MemspaceError: when ``name`` is not a plain relative path inside the folder, is
                one of memspace's own files (manifest, lock, temporaries), or passes
                through a symbolic link.
        """
        self._inside(name, "write")
        if name not in self._manifest["files"]:
            self._manifest["files"].append(name)
            self._save_manifest()
        return self.root / name

    def write(self, name: str, data: bytes | str) -> Path:
        """Register ``name`` and write it atomically."""
        return write_atomic(self.path(name), data)

    def write_json(self, name: str, obj: Any, indent: int | None = 1) -> Path:
        """Register ``name`` and write ``obj`` to it as JSON, atomically."""
        return write_json(self.path(name), obj, indent)

    def read(self, name: str, max_bytes: int | None = None) -> bytes | None:
        """The bytes of the registered-or-not file ``name`` of the run (None when absent).

        Never through a link (:func:`read_regular`).
        """
        path = self._inside(name, "read")
        return read_regular(path, "the run file", max_bytes) if os.path.lexists(path) else None

    def _inside(self, name: str, action: str) -> Path:
        """``root/name`` once ``name`` is a plain relative path with no link on its way."""
        try:
            parts = entry_parts(name)
        except ValueError as error:
            raise MemspaceError(f"cannot {action} into run folder {self.root}: {error}") from None
        link = _link_in(self.root, parts)
        if link is not None:
            raise MemspaceError(
                f"refusing to {action} {name} in {self.root}: {link} is a symbolic link "
                "(memspace never goes through links in a run folder)"
            )
        return self.root.joinpath(*parts)

    def close(self) -> None:
        """Release the lock (the folder and its manifest stay)."""
        self._lock.release()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _remove_ours(root: Path, manifest: Mapping[str, Any]) -> None:
    """Remove what the manifest lists (and their temporaries), newest first; foreign files stay.

    The whole tree of manifests (nested run folders included) is checked first, so a
    folder with one bad entry anywhere is refused with nothing removed. Removal never
    follows a link: each entry is reached through directory descriptors opened with
    ``O_NOFOLLOW``, files and links are unlinked by name, and only empty folders are
    removed.
    """
    _check_tree(root, manifest, depth=0)
    _remove_tree(root, manifest)


def _check_tree(root: Path, manifest: Mapping[str, Any], depth: int) -> None:
    if depth > MAX_NESTING:
        raise MemspaceError(
            f"refusing to overwrite {root}: run folders nest deeper than {MAX_NESTING} levels"
        )
    _check_entries(root, manifest["files"])
    for name in manifest["files"]:
        target = root / name
        if target.is_dir() and not target.is_symlink():
            sub = read_manifest(target)
            if sub is not None:
                _check_tree(target, sub, depth + 1)


def _remove_tree(root: Path, manifest: Mapping[str, Any]) -> None:
    for name in reversed(manifest["files"]):
        parts = entry_parts(name)
        target = root / name
        try:
            if target.is_dir() and not target.is_symlink():
                sub = read_manifest(target)
                if sub is not None:
                    lock = _Lock(target)
                    try:
                        _remove_tree(target, sub)
                    finally:
                        lock.release()
                    for leftover in (MANIFEST, LOCK):
                        _unlink_inside(target, (leftover,))
                if not any(target.iterdir()):
                    _unlink_inside(root, parts, folder=True)
            else:
                _unlink_inside(root, parts)
            _unlink_inside(root, (*parts[:-1], parts[-1] + TMP_SUFFIX))
        except OSError as error:
            raise _os_error("remove", target, error) from None


def _unlink_inside(root: Path, parts: tuple[str, ...], folder: bool = False) -> None:
    """Unlink ``root/parts`` (a file or link by its name, or an empty folder), following no link.

    The parent folders are opened one by one with ``O_NOFOLLOW | O_DIRECTORY``: a link
    planted on the way after the check stops the removal instead of leading it outside.
    """
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | _CLOEXEC
    fd = os.open(root, flags)
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                return
            except OSError as error:
                if error.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise MemspaceError(
                        f"refusing to remove {root / '/'.join(parts)}: {part!r} on its way is a "
                        "link or not a folder"
                    ) from None
                raise
            os.close(fd)
            fd = inner
        try:
            if folder:
                os.rmdir(parts[-1], dir_fd=fd)
            else:
                os.unlink(parts[-1], dir_fd=fd)
        except FileNotFoundError:
            pass
        # A folder where a file was listed: left alone, with what it holds
        except IsADirectoryError:
            pass
    finally:
        os.close(fd)
