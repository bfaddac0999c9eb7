"""Content fingerprints of a dataset's files: what makes re-extracted features give a new run id.

A run id hashes the data fingerprint (``runner.data_fingerprint``). The ids and labels alone miss a tree
whose spectrograms or features were re-extracted, so the fingerprint also covers the bytes of every file
under the adapter's ``data_files()``: the SHA-256 of each file's full content, combined with its path
relative to the dataset root. Full content, not a sample (a re-extracted ``.npy`` of the same shape
differs anywhere), and not size or mtime (a copy of the tree to a cluster changes mtimes, and must keep
its run ids).

Hashing every byte once is the cost (see README, "Data fingerprints"); it is paid once per file: each
file's hash is cached, keyed by its absolute path, size and mtime, in ``<cache>/hashes/<root>.json``
(``<cache>``: ``$MMBALANCE_CACHE``, else ``$XDG_CACHE_HOME/mmbalance``, else ``~/.cache/mmbalance``). A
later fingerprint only stats the files. Each fingerprint's file list is kept as
``<cache>/manifests/<root>-<digest>.json``, so ``mmbalance datasets --verify`` can name the files that changed
since. Hidden files (``.DS_Store``, editors' temp files) are left out.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from mmbalance.common.records import atomic_write_json

__all__ = ["cache_dir", "Manifest", "manifest", "recorded_manifests", "compare"]

CACHE_ENV = "MMBALANCE_CACHE"
CHUNK = 1 << 20  # read 1 MiB at a time: constant memory whatever the file size


def cache_dir() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mmbalance"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _walk(root: Path, entries: Iterable[Path]) -> Iterator[tuple[str, str]]:
    """(absolute path, path relative to ``root``) of every non-hidden file under ``entries`` (files or
    folders relative to ``root``), sorted. Plain strings: pathlib costs more than the stat of a file."""
    base = str(root)
    for entry in sorted({Path(e).as_posix() for e in entries}):
        path = os.path.join(base, entry)
        if os.path.isfile(path):
            yield path, entry
        elif os.path.isdir(path):
            for folder, dirs, files in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                rel = os.path.relpath(folder, base).replace(os.sep, "/")
                yield from (
                    (os.path.join(folder, f), f"{rel}/{f}") for f in sorted(files) if not f.startswith(".")
                )


@dataclass(frozen=True)
class Manifest:
    root: str
    files: dict[str, str]  # path relative to the root -> SHA-256 of its content

    @property
    def digest(self) -> str:
        h = hashlib.sha256()
        for rel, sha in sorted(self.files.items()):
            h.update(f"{rel}\t{sha}\n".encode())
        return h.hexdigest()


def _root_key(root: Path) -> str:
    return hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]


class _HashCache:
    """``{absolute path: [size, mtime_ns, sha256]}`` of one dataset root, read once and written back
    atomically when it changed (two processes writing at once lose some entries, rehashed next time)."""

    def __init__(self, root: Path) -> None:
        self.path = cache_dir() / "hashes" / f"{_root_key(root)}.json"
        try:
            self.entries: dict[str, list] = json.loads(self.path.read_text())
        except (OSError, ValueError):  # none yet, or damaged: rehash
            self.entries = {}
        self.changed = False

    def sha256(self, path: str) -> str:
        """``path`` lies under the resolved root (``manifest``), so it is its own key."""
        st = os.stat(path)
        hit = self.entries.get(path)
        if hit is not None and hit[:2] == [st.st_size, st.st_mtime_ns]:
            return hit[2]
        sha = file_sha256(Path(path))
        self.entries[path] = [st.st_size, st.st_mtime_ns, sha]
        self.changed = True
        return sha

    def save(self) -> None:
        if self.changed:
            try:
                atomic_write_json(self.path, self.entries)
            except OSError:  # a read-only home: the fingerprint is right, only slower next time
                pass


def manifest(root: Path, entries: Iterable[Path], record: bool = True) -> Manifest:
    """The content manifest of the files under ``entries``; ``record`` keeps it for ``datasets --verify``."""
    root = Path(root).resolve()
    cache = _HashCache(root)
    files = {rel: cache.sha256(path) for path, rel in _walk(root, entries)}
    cache.save()
    m = Manifest(str(root), files)
    if record:
        target = cache_dir() / "manifests" / f"{_root_key(root)}-{m.digest[:16]}.json"
        if not target.exists():
            try:
                atomic_write_json(target, {"root": m.root, "recorded": time.time(), "files": files})
            except OSError:
                pass
    return m


def recorded_manifests(root: Path) -> list[tuple[float, Manifest]]:
    """Manifests recorded for ``root``, newest first, with the time each was first recorded."""
    folder, want, found = cache_dir() / "manifests", str(Path(root).resolve()), []
    for f in folder.glob(f"{_root_key(root)}-*.json") if folder.is_dir() else []:
        try:
            doc = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        if doc.get("root") == want:
            found.append((float(doc.get("recorded", 0)), Manifest(want, doc["files"])))
    return sorted(found, key=lambda t: -t[0])


def compare(old: Manifest, new: Manifest) -> dict[str, list[str]]:
    """Files ``changed``, ``added`` and ``removed`` from ``old`` to ``new``."""
    return {
        "changed": sorted(k for k in old.files.keys() & new.files.keys() if old.files[k] != new.files[k]),
        "added": sorted(new.files.keys() - old.files.keys()),
        "removed": sorted(old.files.keys() - new.files.keys()),
    }
