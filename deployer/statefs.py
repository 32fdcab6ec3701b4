"""Private state on disk: directories 0700 and files 0600 whatever the umask, no symbolic links
followed, nothing trusted that another user owns or may write, several files replaced together
or not at all, and every OS error a StateError that names the path and the fix."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from deployer.errors import StateError

DIR_MODE = 0o700
FILE_MODE = 0o600
MAX_STATE_BYTES = 4 << 20  # plan.json of 64 services is some 200 KB

_HINTS = {
    errno.EACCES: "check the owner and mode (`ls -ld` it); qwen-deploy keeps each user's "
    "deployments apart: use your own --home",
    errno.EPERM: "the file may be immutable (`lsattr`; `chattr -i` it) or on a read-only mount",
    errno.ENOSPC: "the disk is full: free some space and run the command again",
    errno.EDQUOT: "the disk quota is used up: free some space and run the command again",
    errno.EROFS: "that file system is read-only: choose another --home",
    errno.EEXIST: "a file stands where a directory should be: move it away",
    errno.ENOTDIR: "a file stands where a directory should be: move it away",
    errno.EISDIR: "a directory stands where a file should be: move it away",
    errno.ELOOP: "it is a symbolic link; qwen-deploy writes real files there: remove the link",
    errno.ENAMETOOLONG: "choose a shorter --home",
}


def state_error(exc: OSError, doing: str, path: str | Path | None = None) -> StateError:
    """An OS error as a state error: what failed, on which path, and what to do about it."""
    where = exc.filename or path
    reason = exc.strerror or str(exc)
    return StateError(
        f"cannot {doing}: {where}: {reason}" if where else f"cannot {doing}: {reason}",
        hint=_HINTS.get(exc.errno or 0, "check that path and run the command again"),
    )


@contextlib.contextmanager
def os_errors(doing: str, path: str | Path | None = None) -> Iterator[None]:
    """Turn OSError (permissions, a full disk, a file in the way) into a StateError."""
    try:
        yield
    except StateError:
        raise
    except OSError as exc:
        raise state_error(exc, doing, path) from None


def make_private_dirs(path: Path) -> None:
    """Create path and its missing parents with mode 0700 (mkdir alone applies the umask)."""
    missing: list[Path] = []
    current = path
    while not current.exists() and not current.is_symlink():
        missing.append(current)
        if current.parent == current:
            break
        current = current.parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # a concurrent command made it first
            directory.mkdir(mode=DIR_MODE)
            os.chmod(directory, DIR_MODE)
    if not path.is_dir():
        raise StateError(
            f"{path} is not a directory", hint="a file stands where a directory should be: move it"
        )


def check_trusted(path: Path, info: os.stat_result, what: str) -> None:
    """Refuse state that another user owns or may change: they could swap its keys."""
    me = os.geteuid()
    if info.st_uid != me:
        raise StateError(
            f"{what} {path} belongs to {_user(info.st_uid)}, not to you ({_user(me)})",
            hint=f"a deployment must be yours alone: `chown -R {_user(me)} {path}` as root, "
            "or use your own --home",
        )
    if info.st_mode & 0o022:
        mode = stat.S_IMODE(info.st_mode)
        raise StateError(
            f"{what} {path} may be changed by other users (mode {mode:04o})",
            hint=f"`chmod go-w {path}`; qwen-deploy creates its directories 0700",
        )


def _user(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return f"uid {uid}"


def check_dir(path: Path) -> None:
    """The deployment directory itself: a directory we own that nobody else may write."""
    info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise StateError(
            f"{path} is not a directory", hint="a file stands where a directory should be: move it"
        )
    check_trusted(path, info, "the deployment directory")


def open_private(path: Path, flags: int, what: str) -> int:
    """Open a state file without following a link; refuse one that is not a regular file of
    ours. O_CREAT makes it 0600 whatever the umask."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise StateError(f"{what} {path} is not a regular file", hint="move it away")
        check_trusted(path, info, what)
        if info.st_nlink > 1:  # a hard link to someone else's file, made before we owned it
            raise StateError(f"{what} {path} has other hard links", hint="remove it")
        if stat.S_IMODE(info.st_mode) != FILE_MODE and flags & (os.O_WRONLY | os.O_RDWR):
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_private(path: Path, what: str) -> str | None:
    """A state file's text, or None when it does not exist. Bounded and UTF-8 only."""
    try:
        fd = open_private(path, os.O_RDONLY | os.O_NONBLOCK, what)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        data = handle.read(MAX_STATE_BYTES + 1)
    if len(data) > MAX_STATE_BYTES:
        raise StateError(f"{what} {path} is larger than {MAX_STATE_BYTES >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise StateError(
            f"{what} {path} is not UTF-8 text (byte 0x{data[exc.start]:02x})",
            hint="fix it in an editor, or delete it and `qwen-deploy render` writes it again",
        ) from None


def _stage(directory: Path, name: str, text: str) -> Path:
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return Path(tmp)


def remove_leftovers(directory: Path, names: list[str]) -> None:
    """Temp files and backups a killed writer left (callers hold the lock: none is live)."""
    for name in names:
        for pattern in (f".{name}.*.tmp", f".{name}.*.bak"):
            for stale in directory.glob(pattern):
                stale.unlink(missing_ok=True)


def replace_together(directory: Path, files: Mapping[str, str]) -> None:
    """Replace every file (in the given order) or none: each new version is staged and
    synced first, each old one kept as a hard link until all the renames are done."""
    staged: dict[str, Path] = {}
    backups: dict[str, Path] = {}
    replaced: list[str] = []
    try:
        for name, text in files.items():
            staged[name] = _stage(directory, name, text)
        for name in files:
            target = directory / name
            try:
                info = os.lstat(target)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(info.st_mode):
                raise StateError(f"{target} is not a regular file", hint="move it away")
            check_trusted(target, info, "the file")
            backup = directory / f".{name}.{secrets.token_hex(4)}.bak"
            # Fails on an immutable file: before anything was replaced.
            os.link(target, backup)
            backups[name] = backup
        for name, tmp in staged.items():
            os.replace(tmp, directory / name)
            replaced.append(name)
    except BaseException:
        for name in reversed(replaced):  # put the old versions back
            with contextlib.suppress(OSError):
                if name in backups:
                    os.replace(backups.pop(name), directory / name)
                else:
                    os.unlink(directory / name)
        raise
    finally:
        for leftover in (*staged.values(), *backups.values()):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
    sync_dir(directory)


def sync_dir(directory: Path) -> None:
    """Make renames in the directory durable, not just the files' contents."""
    dir_fd = os.open(directory, os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
