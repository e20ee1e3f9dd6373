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
"""

from __future__ import annotations

import errno
import json
import os
import signal
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ._errors import MemspaceError

__all__ = ["MANIFEST", "LOCK", "TMP_SUFFIX", "RunFolder", "crash_point", "write_atomic", "write_json"]

MANIFEST = ".memspace-run"
LOCK = ".memspace-lock"
TMP_SUFFIX = ".memspace-tmp"
_MANIFEST_VERSION = 1


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL at a named write step, for the crash tests.

    Active only when the environment variable ``MEMSPACE_TEST_CRASH`` is ``NAME:K``: the
    K-th time (1-based) the step ``NAME`` is reached, the process kills itself — a real
    ``kill -9`` at exactly that moment, which random kills hit only by luck.
    """
    spec = os.environ.get("MEMSPACE_TEST_CRASH")
    if not spec or spec.rpartition(":")[0] != name:
        return
    counts = crash_point.__dict__.setdefault("counts", {})
    counts[name] = counts.get(name, 0) + 1
    if counts[name] == int(spec.rpartition(":")[2]):
        os.kill(os.getpid(), signal.SIGKILL)


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


def write_atomic(path: str | Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` atomically: temporary sibling, flush, fsync, rename.

    Raises:
        MemspaceError: naming ``path`` for any OS error (ENOSPC, EACCES, a missing
            parent); the previous content of ``path``, if any, is untouched and the
            temporary is removed.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        crash_point("before-rename")
        os.replace(tmp, path)
    except OSError as error:
        try:
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


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    file = folder / MANIFEST
    if not file.exists():
        return None
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
        if not isinstance(manifest, dict) or "kind" not in manifest or not isinstance(manifest.get("files"), list):
            raise ValueError
    except (ValueError, OSError, UnicodeDecodeError):
        raise MemspaceError(f"{file} is not a memspace manifest (written by an older memspace, or damaged); "
                            f"move the folder aside and start a new run") from None
    return manifest


def _foreign(folder: Path, ours: Iterable[str]) -> list[str]:
    """Entries of ``folder`` that memspace did not write (temporaries of our files excluded)."""
    known = {MANIFEST, LOCK, MANIFEST + TMP_SUFFIX}
    for name in ours:
        known |= {name, name + TMP_SUFFIX}
    return sorted(entry.name for entry in folder.iterdir() if entry.name not in known)


def _describe(names: list[str]) -> str:
    shown = ", ".join(names[:3])
    return shown + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def _format_value(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def config_differences(stored: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``name: stored → current`` for every key whose value differs (missing counts)."""
    missing = object()
    return [f"{key} {_format_value(stored.get(key, '(unset)'))} → {_format_value(current.get(key, '(unset)'))}"
            for key in sorted(set(stored) | set(current))
            if stored.get(key, missing) != current.get(key, missing)]


class _Lock:
    """An exclusive, non-blocking OS lock on ``folder/.memspace-lock`` holding our PID."""

    def __init__(self, folder: Path):
        self.file = folder / LOCK
        try:
            self._fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            raise _os_error("lock", folder, error) from None
        try:
            _lock_fd(self._fd)
        except BlockingIOError:
            os.close(self._fd)
            holder = _read_pid(self.file)
            raise MemspaceError(f"run folder {folder} is in use by another memspace process"
                                f"{f' (PID {holder})' if holder else ''}; wait for it to finish "
                                "or choose another --out") from None
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
        return int(file.read_text().strip())
    except (OSError, ValueError):
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
    def open(cls, root: str | Path, *, kind: str, config: Mapping[str, Any] | None = None, overwrite: bool = False,
             ignore: Iterable[str] = (), finished: str | None = None) -> RunFolder:
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
        manifest = _read_manifest(root) if root.exists() else None
        if root.exists() and manifest is None:
            foreign = _foreign(root, ())
            if foreign:
                raise MemspaceError(f"refusing to use {root}: it is not a memspace run folder (it holds "
                                    f"{_describe(foreign)}); choose another --out")
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
        if _read_manifest(root) is None:
            raise MemspaceError(f"{root} is not a memspace run folder")
        lock = _Lock(root)
        try:
            return cls(root, _read_manifest(root), lock, True)
        except BaseException:
            lock.release()
            raise

    @classmethod
    def _open_locked(cls, root: Path, kind: str, config: dict, overwrite: bool, ignore: set[str],
                     finished: str | None, lock: _Lock) -> RunFolder:
        manifest = _read_manifest(root)  # again, now that the folder is ours
        if manifest is None:
            foreign = _foreign(root, ())
            if foreign:
                raise MemspaceError(f"refusing to use {root}: it is not a memspace run folder (it holds "
                                    f"{_describe(foreign)}); choose another --out")
        elif manifest["kind"] != kind:
            raise MemspaceError(f"{root} holds a memspace {manifest['kind']} run, not a {kind} run; "
                                "choose another --out")
        elif overwrite:
            _remove_ours(root, manifest)
            manifest = None
        elif finished is not None and (root / finished).exists():
            raise MemspaceError(f"output folder {root} already exists and holds a finished {kind} run; "
                                "pass --overwrite to replace it or choose another --out")
        else:
            stored = {k: v for k, v in manifest.get("config", {}).items() if k not in ignore}
            differences = config_differences(stored, {k: v for k, v in config.items() if k not in ignore})
            if differences:
                raise MemspaceError(f"{root} holds a run started with other options ({'; '.join(differences)}); "
                                    "rerun with the same options to resume it, or pass --overwrite or another "
                                    "--out to start a new run")
            manifest["config"] = {**manifest.get("config", {}), **config}
            resumed = any((root / name).exists() for name in manifest["files"])
            folder = cls(root, manifest, lock, resumed)
            folder._save_manifest()
            return folder
        folder = cls(root, {"memspace_manifest": _MANIFEST_VERSION, "kind": kind, "config": config, "files": []},
                     lock, False)
        folder._save_manifest()
        return folder

    def _save_manifest(self) -> None:
        write_json(self.root / MANIFEST, self._manifest)

    def path(self, name: str) -> Path:
        """Register ``name`` (a file or subfolder relative to the run) and return its path."""
        if name not in self._manifest["files"]:
            self._manifest["files"].append(name)
            self._save_manifest()
        return self.root / name

    def write(self, name: str, data: bytes | str) -> Path:
        """Register ``name`` and write it atomically."""
        return write_atomic(self.path(name), data)

    def write_json(self, name: str, obj: Any, indent: int | None = 1) -> Path:
        return write_json(self.path(name), obj, indent)

    def close(self) -> None:
        """Release the lock (the folder and its manifest stay)."""
        self._lock.release()

    def __enter__(self) -> RunFolder:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _remove_ours(root: Path, manifest: Mapping[str, Any]) -> None:
    """Remove what the manifest lists (and their temporaries), newest first; foreign files stay."""
    for name in reversed(manifest["files"]):
        target = root / name
        try:
            if target.is_dir() and not target.is_symlink():
                sub = _read_manifest(target)
                if sub is not None:
                    lock = _Lock(target)
                    try:
                        _remove_ours(target, sub)
                    finally:
                        lock.release()
                    for leftover in (MANIFEST, LOCK):
                        (target / leftover).unlink(missing_ok=True)
                if not any(target.iterdir()):
                    target.rmdir()
            else:
                target.unlink(missing_ok=True)
            (root / (name + TMP_SUFFIX)).unlink(missing_ok=True)
        except OSError as error:
            raise _os_error("remove", target, error) from None
