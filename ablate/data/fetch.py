"""`ablate data fetch`: a dataset's official archives downloaded into the layout its loader reads.

Resumable (HTTP Range from a `.part` file: an interrupted fetch continues, in this run with a few
retries or in the next one), verified (published MD5s; zip CRCs and the member counts of the
manifest), disk space checked first, extracted into a hidden folder inside the root and moved in
only once `check_dataset` finds the extracted tree complete (a loader never sees half a tree), and
under a file lock in the root, so two nodes fetching into shared storage do the work once. A fetched
root gets a marker with its file counts: a second fetch compares them and returns without any
network access.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import tarfile
import time
import urllib.parse
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import requests
import urllib3

from ..files import file_lock, write_atomically
from .base import DataError
from .check import check_dataset
from .manifest import MIRROR_ENV, Archive, DatasetManifest
from .progress import Progress

STAGING = ".ablate-fetch"  # inside the root (same file system: the final move is a rename); loaders never look
LOCK = ".ablate-fetch.lock"  # kept for good: removing a lock file others may wait on would let two fetches in
MARKER = ".ablate-complete.json"  # written last: the root is complete, with the file counts of its folders
CHUNK = 1 << 20
TIMEOUT = (15, 60)  # seconds to connect, and between two reads of a stalled transfer


@dataclass
class FetchResult:
    dataset: str
    root: Path
    already_complete: bool  # nothing downloaded: the root was complete (fetched before, or copied by hand)
    downloaded_bytes: int = 0
    resumed: dict[str, int] = field(default_factory=dict)  # archive -> bytes already there when its download began
    files: int = 0
    seconds: float = 0.0

    def line(self) -> str:
        if self.already_complete:
            return (f"{self.dataset}: already complete at {self.root} ({self.files:,} files); nothing downloaded "
                    f"({self.seconds:.2f} s)")
        resumed = "".join(f", {name} resumed at {n / 2**20:.1f} MiB" for name, n in self.resumed.items())
        return (f"{self.dataset}: complete at {self.root} ({self.files:,} files); downloaded "
                f"{self.downloaded_bytes / 2**20:.1f} MiB{resumed} ({self.seconds:.1f} s)")


def fetch_dataset(manifest: DatasetManifest, root: Path | None = None, mirror: str | None = None, *,
                  progress: Progress | None = None, retries: int = 3, retry_wait: float = 2.0) -> FetchResult:
    """Make `root` (default: the manifest's) a complete, verified copy of the dataset; see the module doc.
    mirror: base URL serving the archives under their official names (default: $ABLATE_DATA_MIRROR,
    else the official addresses)."""
    if not manifest.archives:
        raise DataError(f"{manifest.dataset} has no official archive to fetch; assemble it as the README's "
                        f"'Data sets' section says, then run `ablate data check {manifest.dataset} --root DIR`")
    if root is None and manifest.default_root is None:
        raise DataError(f"{manifest.dataset}: no default root; pass --root DIR")
    root = Path(root or manifest.default_root or "").expanduser().absolute()
    mirror = mirror or os.environ.get(MIRROR_ENV) or None
    if mirror is not None:
        check_mirror(mirror)
    started = time.monotonic()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DataError(f"cannot create data root {root} ({err.strerror}); choose another --root") from None
    if not os.access(root, os.W_OK | os.X_OK):  # e.g. a read-only mount: complete (by its marker) or refused
        files = _counts_as_fetched(manifest, root)
        if files is None:
            raise DataError(f"data root {root} cannot be written (read-only file system or no permission) and is "
                            f"not a complete fetched {manifest.dataset}; choose another --root")
        return FetchResult(manifest.dataset, root, True, files=files, seconds=time.monotonic() - started)
    try:
        with file_lock(root / LOCK, waiting=f"{manifest.dataset}: another fetch into {root} is running; waiting"):
            files = _already_complete(manifest, root)
            if files is not None:
                return FetchResult(manifest.dataset, root, True, files=files, seconds=time.monotonic() - started)
            result = _fetch(manifest, root, mirror, progress, retries, retry_wait)
    except DataError as err:  # requests' messages repeat the URL, with its password
        raise DataError(mask_password(str(err), mirror)) from None
    except requests.RequestException as err:  # an address requests cannot use, too many redirects...
        raise DataError(f"fetching {manifest.dataset} failed: {mask_password(str(err), mirror)}; check the "
                        f"address (--mirror or ${MIRROR_ENV})") from None
    except OSError as err:  # the disk filled up, or the root became read-only, mid-fetch
        raise DataError(f"fetching {manifest.dataset} into {root} failed: {err.strerror or err} "
                        f"({mask_password(str(err.filename or ''), mirror)}); fix that and run the same command "
                        "again: it resumes") from None
    result.seconds = time.monotonic() - started
    return result


def check_mirror(mirror: str) -> None:
    """DataError unless `mirror` is an http(s) URL with a host (`htp://`, `host:port` are not)."""
    parts = urllib.parse.urlsplit(mirror)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise DataError(f"--mirror / ${MIRROR_ENV} {mask_password(mirror, mirror)!r} is not an http:// or "
                        "https:// address with a host; write it as http://host:port/path")


def mask_password(text: str, url: str | None) -> str:
    """`text` with the password of `url` (user:password@host) shown as ***."""
    password = urllib.parse.urlsplit(url).password if url else None
    return text.replace(f":{password}@", ":***@") if password else text


def _fetch(manifest: DatasetManifest, root: Path, mirror: str | None, progress: Progress | None, retries: int,
           retry_wait: float) -> FetchResult:
    staging = root / STAGING
    staging.mkdir(exist_ok=True)
    result = FetchResult(manifest.dataset, root, False)
    with requests.Session() as session:
        session.headers["User-Agent"] = "ablate-data-fetch"
        urls = {a.filename: f"{mirror.rstrip('/')}/{a.filename}" if mirror else a.url for a in manifest.archives}
        sizes = {a.filename: _remote_size(session, urls[a.filename]) or a.size_hint for a in manifest.archives}
        _check_space(manifest, root, staging, sizes)
        for archive in manifest.archives:
            path = staging / archive.filename
            if not path.exists():  # a verified-size archive from an interrupted earlier run is reused
                download = _Download(session, urls[archive.filename], path, sizes[archive.filename], progress)
                download.run(retries, retry_wait)
                result.downloaded_bytes += download.received
                if download.resumed_from:
                    result.resumed[archive.filename] = download.resumed_from
            _verify(manifest, archive, path, urls[archive.filename])
    tree = _extract(manifest, staging, progress)
    report = check_dataset(manifest, tree)
    if not report.complete:
        shutil.rmtree(tree)
        raise DataError(f"the {manifest.dataset} archives extract into an incomplete tree, so nothing was moved "
                        f"into {root}: {report.summary()}; check the mirror, or delete {staging} and fetch again")
    for entry in manifest.entries:  # annotations last: a loader sees no annotations or a complete tree
        os.replace(tree / entry, root / entry)
    counts = _tree_counts(root, manifest.entries)
    marker = {"dataset": manifest.dataset, "fetched": datetime.datetime.now().isoformat(timespec="seconds"),
              "archives": {a.filename: {"url": urls[a.filename], "bytes": sizes[a.filename], "md5": a.md5}
                           for a in manifest.archives},
              "files": counts}
    write_atomically(root / MARKER, lambda p: p.write_text(json.dumps(marker, indent=1)))
    shutil.rmtree(staging)
    result.files = sum(counts.values())
    return result


# ---- what is there already ------------------------------------------------------------------------

def _tree_counts(root: Path, entries: tuple[str, ...]) -> dict[str, int]:
    """Files per folder under the entries (one directory listing each, no stat per file)."""
    counts = {}
    for entry in entries:
        for folder, _, files in os.walk(root / entry):
            counts[str(Path(folder).relative_to(root))] = len(files)
    return counts


def _already_complete(manifest: DatasetManifest, root: Path) -> int | None:
    """The file count of a root that is complete already (fetched before: its folders' counts match the
    marker; or copied in by hand: checked now), None for a root without any of the entries; a DataError
    for anything in between, which is never overwritten."""
    marker = root / MARKER
    present = [e for e in manifest.entries if (root / e).exists()]
    files = _counts_as_fetched(manifest, root)
    if files is not None:
        return files
    if not present:
        return None
    report = check_dataset(manifest, root)
    if not report.complete:
        raise DataError(f"{root} already holds {', '.join(present)} but not a complete {manifest.dataset} "
                        f"({report.summary()}); move those aside and fetch again, or complete them by hand "
                        f"(`ablate data check` lists every problem)")
    counts = _tree_counts(root, manifest.entries)
    write_atomically(marker, lambda p: p.write_text(json.dumps({"dataset": manifest.dataset, "files": counts})))
    return sum(counts.values())


def _marker_files(marker: Path) -> dict[str, int] | None:
    """The file counts the marker holds; None when it is missing, damaged or incomplete (the tree is then
    checked as if copied by hand, and the marker written again)."""
    try:
        files = json.loads(marker.read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = isinstance(files, dict) and all(isinstance(k, str) and type(v) is int for k, v in files.items())
    return files if ok and files else None


def _counts_as_fetched(manifest: DatasetManifest, root: Path) -> int | None:
    """The file count of a root whose folders match its marker's counts; None without a usable marker; a
    DataError for a fetched root changed since."""
    expected = _marker_files(root / MARKER)
    present = [e for e in manifest.entries if (root / e).exists()]
    if expected is None or not present:
        return None
    counts = _tree_counts(root, manifest.entries)
    changed = [f"{folder}/ has {counts.get(folder, 0):,} files, {n:,} when fetched"
               for folder, n in expected.items() if counts.get(folder, 0) != n]
    if changed:
        raise DataError(f"{manifest.dataset} at {root} changed since it was fetched: {'; '.join(changed[:3])}; "
                        f"`ablate data check {manifest.dataset} --root {root}` names the files; restore "
                        f"them, or delete {', '.join(present)} and {MARKER} and fetch again")
    return sum(counts.values())


def _check_space(manifest: DatasetManifest, root: Path, staging: Path, sizes: dict[str, int]) -> None:
    """Room for what is left to download plus the extracted tree (JPEGs do not compress: about the
    archives' size), before a byte is downloaded."""
    def on_disk(name: str) -> int:
        for path in (staging / name, staging / f"{name}.part"):
            if path.exists():
                return path.stat().st_size
        return 0

    to_download = sum(max(0, size - on_disk(name)) for name, size in sizes.items())
    need = int((to_download + sum(sizes.values())) * 1.02)
    free = shutil.disk_usage(root).free
    if free < need:
        raise DataError(f"{root} has {free / 2**30:.1f} GiB free; fetching {manifest.dataset} needs about "
                        f"{need / 2**30:.1f} GiB ({to_download / 2**30:.1f} GiB to download, then the extracted "
                        "tree beside the archives); free some space or choose another --root")


# ---- downloading ----------------------------------------------------------------------------------

def _remote_size(session: requests.Session, url: str) -> int | None:
    """Content-Length from a HEAD request; None when the server does not say (the GET reports real errors)."""
    try:
        response = session.head(url, allow_redirects=True, timeout=TIMEOUT)
    except requests.RequestException:
        return None
    length = response.headers.get("Content-Length")
    return int(length) if response.ok and length and length.isdigit() else None


class _Transient(Exception):
    """Worth another try: the server ended a transfer early, or answered with a server error (5xx)."""


@dataclass
class _Download:
    """One archive into `<dest>.part`, continued with an HTTP Range request after every interruption."""

    session: requests.Session
    url: str
    dest: Path
    total: int
    progress: Progress | None
    received: int = 0  # bytes received by this run
    resumed_from: int = 0  # bytes of the .part file when this run began

    @property
    def part(self) -> Path:
        return self.dest.with_name(f"{self.dest.name}.part")

    def _have(self) -> int:
        return self.part.stat().st_size if self.part.exists() else 0

    def run(self, retries: int, retry_wait: float) -> None:
        self.resumed_from = self._have()
        for attempt in range(retries + 1):
            try:
                self._get()
                break
            except (requests.ConnectionError, requests.Timeout, urllib3.exceptions.HTTPError, _Transient) as err:
                if attempt == retries:
                    raise DataError(
                        f"download of {self.url} stopped at {self._have():,} of {self.total:,} bytes after "
                        f"{retries + 1} attempt(s) ({err}); run the same command again: it "
                        "continues from there") from None
                time.sleep(retry_wait * (attempt + 1))
        self.part.replace(self.dest)

    def _get(self) -> None:
        start = self._have()
        if self.total and start == self.total:
            return
        if self.total and start > self.total:  # a stale .part of another (larger) file: this one starts again
            self.part.unlink()
            self.resumed_from = start = 0
        headers = {"Range": f"bytes={start}-"} if start else {}
        with self.session.get(self.url, headers=headers, stream=True, timeout=TIMEOUT) as response:
            if response.status_code >= 500:
                raise _Transient(f"HTTP {response.status_code}")
            if response.status_code == 416 and start:  # the .part is not a prefix of this file: start again
                self.part.unlink()
                self.resumed_from = 0
                raise _Transient(f"HTTP 416 for a .part of {start:,} bytes; starting {self.dest.name} again")
            if response.status_code >= 400:
                raise DataError(f"{self.url} answered HTTP {response.status_code} {response.reason}; check the "
                                f"address (a --mirror or ${MIRROR_ENV} must serve the archives under their "
                                "official file names)")
            if start and response.status_code != 206:
                start = 0  # the server ignores Range: start over rather than append the whole file
            length = response.headers.get("Content-Length")
            if length and length.isdigit():
                self.total = start + int(length)
            with self.part.open("ab" if start else "wb") as out:
                # read1 hands over what has arrived: a dropped connection loses no byte already received
                # (a fixed-size read discards its partial chunk), so the next Range starts exactly there
                while chunk := response.raw.read1(CHUNK, decode_content=False):
                    out.write(chunk)
                    self.received += len(chunk)
                    if self.progress:
                        self.progress(self.dest.name, out.tell(), self.total, "B")
        if self.total and self._have() < self.total:
            raise _Transient(f"{self._have()} of {self.total} bytes")


# ---- verifying and extracting ---------------------------------------------------------------------

def _md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _members(path: Path) -> list[str]:
    """The file names in a tar or zip archive (folders left out)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            return [i.filename for i in zf.infolist() if not i.is_dir()]
    with tarfile.open(path) as tar:
        return [m.name for m in tar.getmembers() if m.isfile()]


def _verify(manifest: DatasetManifest, archive: Archive, path: Path, url: str) -> None:
    """Published MD5, then the archive's member counts; a bad archive is deleted (never extracted) and
    the error says what was found and what was expected."""
    def refuse(what: str) -> DataError:
        path.unlink()
        return DataError(f"{manifest.dataset}: {archive.filename} from {url} {what}; it was deleted and nothing "
                         f"was extracted; run the fetch again (a mirror must serve the official file)")

    if archive.md5 is not None and (got := _md5(path)) != archive.md5:
        raise refuse(f"has MD5 {got}, the published MD5 is {archive.md5} (damaged download or another file)")
    try:
        names = _members(path)
    except (zipfile.BadZipFile, tarfile.TarError, OSError) as err:
        raise refuse(f"is not a readable archive ({err})") from None
    if archive.images_of is not None:
        expected = manifest.splits[archive.images_of]
        images = sum(n.endswith(manifest.image_suffix) and "/JPEGImages/" in f"/{n}"
                     if manifest.layout == "voc" else n.endswith(manifest.image_suffix) for n in names)
        if expected is not None and images != expected:
            raise refuse(f"holds {images:,} images, {archive.images_of} has {expected:,}")
    missing = sorted(set(archive.required) - set(names))
    if missing:
        raise refuse(f"lacks {', '.join(missing)}")


def _extract(manifest: DatasetManifest, staging: Path, progress: Progress | None) -> Path:
    """Every archive into a fresh `<staging>/tree`; a CRC error (zip) names the member and deletes the archive."""
    tree = staging / "tree"
    shutil.rmtree(tree, ignore_errors=True)  # left by an interrupted run
    tree.mkdir()
    for archive in manifest.archives:
        path = staging / archive.filename
        label = f"extract {archive.filename}"
        try:
            for done, total in _extract_one(path, tree):
                if progress and (done % 512 == 0 or done == total):
                    progress(label, done, total, "files")
        except (zipfile.BadZipFile, tarfile.TarError) as err:
            path.unlink()
            shutil.rmtree(tree)
            raise DataError(f"{manifest.dataset}: {archive.filename} is damaged ({err}); it was deleted and "
                            "nothing was moved into the root; run the fetch again") from None
    return tree


def _extract_one(path: Path, tree: Path) -> Iterator[tuple[int, int]]:
    """Extract members one by one (zip: CRC checked as each is read; tar: the 'data' filter refuses links
    and paths out of the tree), yielding (done, total)."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            for i, info in enumerate(infos, 1):
                zf.extract(info, tree)
                yield i, len(infos)
        return
    with tarfile.open(path) as tar:
        members = tar.getmembers()
        for i, member in enumerate(members, 1):
            tar.extract(member, tree, filter="data")
            yield i, len(members)
