"""Where the raw corpora come from: downloaded archives, local archives, or unpacked files.

An :class:`Archive` names a file of the original distribution (e.g. WIT3's ``de-en.tgz``), the
places to download it from, and whatever checksum of it is published. :class:`Sources` reads a
*member* of an archive (``de-en/train.tags.de-en.de``) from, in order:

1. each ``--source`` path: the archive itself (a file with the archive's name, or such a file
   anywhere under a directory), or the member already unpacked under a directory (its path or just
   its file name, optionally ``.xz``/``.gz``-compressed);
2. the download cache (``--cache``), downloading the archive if allowed (not ``--offline``).

Archives with a published checksum are verified before use; a mismatch or an unreadable archive is
an error naming the file. Every file read is recorded (path, sha256) for the manifest.
"""

import gzip
import hashlib
import io
import lzma
import sys
import tarfile
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from labo_fairseq.runtime.errors import ToolError


class SourceError(ToolError):
    """A missing, corrupt or unverifiable input; the message names the file."""


@dataclass(frozen=True)
class Archive:
    name: str  # file name of the original archive, e.g. "de-en.tgz"
    urls: Tuple[str, ...]  # download locations, tried in order
    md5: Optional[str] = None
    sha256: Optional[str] = None
    git_sha1: Optional[str] = None  # git blob SHA-1 (``git hash-object``), e.g. from fairseq's repository
    key: str = ""  # distinguishes archives with the same file name (WIT3 uses de-en.tgz every year)
    single: bool = False  # the download is one (optionally .gz/.xz-compressed) text file, not a tarball

    @property
    def label(self) -> str:
        return f"{self.key}/{self.name}" if self.key else self.name

    def published(self) -> Dict[str, str]:
        """The checksums published for this archive, by kind (md5, sha256, git_sha1)."""
        return {k: getattr(self, k) for k in ("md5", "sha256", "git_sha1") if getattr(self, k)}


def file_digests(path: Path) -> Dict[str, str]:
    md5, sha256, sha1 = hashlib.md5(), hashlib.sha256(), hashlib.sha1()
    size = path.stat().st_size
    sha1.update(b"blob %d\0" % size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            md5.update(chunk)
            sha256.update(chunk)
            sha1.update(chunk)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest(), "git_sha1": sha1.hexdigest()}


def _open_text(path: Path) -> io.TextIOBase:
    opener = {".xz": lzma.open, ".gz": gzip.open}.get(path.suffix, open)
    return opener(path, "rt", encoding="utf-8", newline="\n")


@dataclass
class Sources:
    paths: Sequence[Path] = ()
    cache: Path = Path("downloads")
    offline: bool = False
    used: Dict[str, Dict[str, str]] = field(default_factory=dict)  # label -> {"path", checksums...}
    _archives: Dict[str, Path] = field(default_factory=dict)
    _found: Dict[str, Optional[Path]] = field(default_factory=dict)
    _rejected: Dict[str, List[Path]] = field(default_factory=dict)
    _digests: Dict[Path, Dict[str, str]] = field(default_factory=dict)
    _tars: Dict[Path, tarfile.TarFile] = field(default_factory=dict)

    def digests(self, path: Path) -> Dict[str, str]:
        """:func:`file_digests`, computed once per file (choosing and verifying both need them)."""
        if path not in self._digests:
            self._digests[path] = file_digests(path)
        return self._digests[path]

    # ------------------------------------------------------------------ archives

    def _candidates(self, archive: Archive) -> List[Path]:
        """Files named like the archive under --source (key-matching paths first), then the cache."""
        found: List[Path] = []
        for p in map(Path, self.paths):
            if p.is_file() and p.name == archive.name:
                found.append(p)
            elif p.is_dir():
                hits = sorted(h for h in p.rglob(archive.name) if h.is_file())
                found += sorted(hits, key=lambda h: archive.key not in h.as_posix()) if archive.key else hits
        cached = self.cache / (archive.key or "") / archive.name
        if cached.is_file():
            found.append(cached)
        return list(dict.fromkeys(found))

    def _find_archive(self, archive: Archive) -> Optional[Path]:
        """The archive to use. WIT3 names every year's archive ``de-en.tgz``: where a checksum is
        published, the first candidate that matches it wins; otherwise the first candidate."""
        if archive.label in self._found:
            return self._found[archive.label]
        self._found[archive.label] = self._pick(archive)
        return self._found[archive.label]

    def _pick(self, archive: Archive) -> Optional[Path]:
        cands = self._candidates(archive)
        if not cands:
            return None
        published = archive.published()
        if not published:
            return cands[0]
        for c in cands:
            got = self.digests(c)
            if all(got[k] == v for k, v in published.items()):
                return c
        # None verifies. A file whose path names this archive's key (e.g. .../2017-01-ted-test/) is
        # meant to be it: use it, so that it is reported as corrupt. Others are another year's
        # archive of the same name: skip them, and say so if the input turns out to be missing.
        keyed = [c for c in cands if archive.key and archive.key in c.as_posix()]
        self._rejected[archive.label] = [c for c in cands if c not in keyed]
        return keyed[0] if keyed else None

    def _download(self, archive: Archive) -> Path:
        dest = self.cache / (archive.key or "") / archive.name
        rejected = self._rejected.get(archive.label)
        if rejected:
            sums = ", ".join(f"{k} {v}" for k, v in archive.published().items())
            hint = f" (skipped {', '.join(map(str, rejected))}: not its published {sums})"
        else:
            hint = ""
        if self.offline:
            raise SourceError(f"{archive.label}: not found under --source {list(map(str, self.paths))} "
                              f"or in {dest.parent}{hint}, and --offline forbids downloading it")
        dest.parent.mkdir(parents=True, exist_ok=True)
        errors = []
        for url in archive.urls:
            part = dest.with_name(dest.name + ".part")
            try:
                print(f"downloading {url}", file=sys.stderr)
                with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as out:
                    total = int(r.headers.get("Content-Length") or 0)
                    done = 0
                    for chunk in iter(lambda: r.read(1 << 20), b""):
                        out.write(chunk)
                        done += len(chunk)
                        if total:
                            print(f"\r  {done >> 20} / {total >> 20} MiB", end="", file=sys.stderr)
                    print(file=sys.stderr)
                part.replace(dest)
                return dest
            except OSError as err:  # URLError, HTTPError, timeouts
                errors.append(f"{url}: {err}")
                part.unlink(missing_ok=True)
        raise SourceError(f"could not download {archive.label}:\n  " + "\n  ".join(errors)
                          + "\ndownload it yourself and pass --source DIR_OR_FILE")

    def _verify(self, archive: Archive, path: Path) -> Dict[str, str]:
        got = self.digests(path)
        for kind, want in archive.published().items():
            if got[kind] != want:
                raise SourceError(f"{path}: {kind} {got[kind]} does not match the published {want} of "
                                  f"{archive.label}: a corrupt download or another release; replace the file")
        try:
            if archive.single:
                with _open_text(path) as f:
                    while f.read(1 << 20):
                        pass
            else:
                self._tar(path)  # indexes every member: a truncated archive fails here
        except (tarfile.TarError, EOFError, OSError, lzma.LZMAError, UnicodeDecodeError) as err:
            raise SourceError(f"{path}: not a readable archive ({err}): a corrupt or truncated copy of {archive.label}")
        verified = ",".join(archive.published()) or "no published checksum"
        return {"path": str(path), "sha256": got["sha256"], "verified": verified}

    def archive(self, archive: Archive) -> Path:
        if archive.label not in self._archives:
            path = self._find_archive(archive) or self._download(archive)
            self._found[archive.label] = path
            self.used[archive.label] = self._verify(archive, path)
            self._archives[archive.label] = path
        return self._archives[archive.label]

    # ------------------------------------------------------------------- members

    def _find_unpacked(self, member: str) -> Optional[Path]:
        name = Path(member).name
        for p in map(Path, self.paths):
            if not p.is_dir():
                continue
            for suffix in ("", ".xz", ".gz"):
                for cand in (p / (member + suffix), p / (name + suffix)):
                    if cand.is_file():
                        return cand
            for suffix in ("", ".xz", ".gz"):
                hits = sorted(h for h in p.rglob(name + suffix) if h.is_file())
                if hits:
                    return hits[0]
        return None

    def _tar(self, path: Path) -> tarfile.TarFile:
        """The archive, opened once: its member index is read once (a full pass through a .tgz), and
        each member is then read from its offset instead of re-indexing the archive per member."""
        if path not in self._tars:
            self._tars[path] = tarfile.open(path)
            self._tars[path].getmembers()
        return self._tars[path]

    def lines(self, archive: Archive, member: str) -> List[str]:
        """The text lines (without newlines) of ``member`` of ``archive`` (of the file, if ``archive.single``)."""
        unpacked = None if archive.single or self._find_archive(archive) else self._find_unpacked(member)
        if archive.single:
            with _open_text(self.archive(archive)) as f:
                text = f.read()
        elif unpacked is not None:
            with _open_text(unpacked) as f:
                text = f.read()
            self.used[f"{archive.label}:{member}"] = {"path": str(unpacked),
                                                      "sha256": hashlib.sha256(text.encode()).hexdigest()}
        else:
            path = self.archive(archive)
            tar = self._tar(path)
            match = [m for m in tar.getmembers() if m.name == member or m.name.endswith("/" + member)]
            if not match:
                raise SourceError(f"{path}: has no member {member} (is it {archive.label}?)")
            text = tar.extractfile(match[0]).read().decode("utf-8")
        return text.split("\n")[:-1] if text.endswith("\n") else text.split("\n")
