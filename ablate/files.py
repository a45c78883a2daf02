"""Files: one writer at a time (flock), writes readers never see half done (atomic rename), and a trial's
output folder checked before anything runs (it can be created and written, it has room for a checkpoint,
and only one run writes into it at a time: two on the same folder would overwrite each other's checkpoint
and metrics without a word). The one home of these for every layer."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from tqdm.auto import tqdm

from .errors import ConfigError

LOCK = ".lock"
MIB = 2**20
MIN_FREE = 64 * MIB  # below this a checkpoint write may fail even for a tiny method


def ensure_writable_folder(folder: Path) -> Path:
    """`folder`, created if missing; ConfigError naming it when it cannot be created or written."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"output folder {folder} is a file, not a folder; choose another --out")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"cannot create output folder {folder} ({err.strerror}); choose another --out") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConfigError(f"output folder {folder} is not writable; choose another --out or fix its permissions")
    return folder


def check_free_space(folder: Path, state_bytes: int) -> None:
    """Room for a checkpoint (parameters, optimizer state, best-so-far copy, trained.pt): generously,
    4x the trainable state, at least 64 MiB; ConfigError saying how much is needed and free."""
    need = max(MIN_FREE, 4 * state_bytes)
    free = shutil.disk_usage(folder).free
    if free < need:
        raise ConfigError(f"{folder} has {free / MIB:.1f} MiB free; this trial's checkpoints need about "
                          f"{need / MIB:.0f} MiB; free some space or choose another --out")


@contextlib.contextmanager
def exclusive_folder(folder: Path) -> Iterator[Path]:
    """Hold a non-blocking lock on `<folder>/.lock` (pid and host written in it) while the block runs;
    ConfigError naming the holder when another process has it. The kernel drops it when we exit."""
    folder = ensure_writable_folder(folder)
    try:
        fd = os.open(folder / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise ConfigError(f"cannot write in output folder {folder} ({err.strerror}); choose another --out") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise ConfigError(f"output folder {folder} is in use by {holder}; wait for that run to end or "
                              "choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield folder
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def file_lock(path: Path, waiting: str | None = None) -> Iterator[None]:
    """Exclusive inter-process lock (flock on `path`) held while the block runs; `waiting`, if given,
    is printed to stderr when another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if waiting:
                tqdm.write(waiting, file=sys.stderr)  # between progress bars, not through them
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` to a temp file beside `path`, then rename it: readers see the old file or the new one.
    The file gets the mode a plain open() would give it (mkstemp's is owner-only: on a shared cache
    other users could not read it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_private(path: Path, text: str) -> None:
    """`text` into a file only its owner reads (mode 600, also when the file was there with another mode),
    written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)  # mkstemp's mode is 600
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def fill_atomically(root: Path, fill: Callable[[Path], None]) -> None:
    """`fill(tmp)` a fresh folder beside `root`, then rename it to `root` (atomic; replaces an empty folder)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.tmp-", dir=root.parent))
    try:
        fill(tmp)
        tmp.chmod(0o777 & ~current_umask())  # mkdtemp makes it owner-only; a plain mkdir would not
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def current_umask() -> int:
    """The process umask, read from /proc where there is one: setting and restoring it (the only other
    way) briefly changes it for every thread."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in 16 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()
