#!/usr/bin/env python3
"""Helpers of ``scripts/install.sh --bundle / --from-bundle`` (standard library only, Python >= 3.8).

  requirements PYPROJECT      the plugin's dependencies and test extra, one a line, without torch and
                              numpy (the target has them) and without optional extras
  fetch-sdist NAME VERSION DIR
                              NAME-VERSION.tar.gz from the index's simple page (PIP_INDEX_URL, default
                              PyPI), sha256-checked, then repacked without the data files (images,
                              notebooks, .npy fixtures) of its examples: no code is removed
  finish DIR PYVER NUMPY [FREEZE]
                              remove torch/numpy/CUDA wheels (and those of FREEZE, the target's
                              `pip list --format freeze`), write DIR/bundle.json, print the size
  check DIR                   exit 1, naming the problem, unless this interpreter can use the bundle
                              and every file is there with its sha256
  pack DIR ARCHIVE            DIR as one .tar.xz for transport: each wheel stored uncompressed inside
                              (xz then compresses the whole; scipy's 35 MB wheel becomes ~23 MB)
  unpack ARCHIVE DIR          the bundle of ARCHIVE into DIR (a directory --from-bundle reads)
  prune DIR                   remove the data files of examples/ (as fetch-sdist does) from an unpacked
                              wheel in DIR, before it is packed again
  built-with                  this interpreter's Python, torch and numpy versions, as JSON: what a
                              fairseq wheel compiled here is bound to
"""

import hashlib
import html.parser
import io
import json
import os
import re
import sys
import tarfile
import urllib.parse
import urllib.request
import zipfile
from typing import Dict, List

LIMIT = 64 * 2 ** 20  # bytes: the bundle must travel in 64 MiB
MANIFEST = "bundle.json"
# Never in the bundle: the target's own (CUDA) torch and its numpy must not be replaced.
EXCLUDED = re.compile(r"^(torch|numpy|triton|nvidia[-_].*|cuda[-_].*)$", re.I)
# Data files of fairseq's examples (figures, notebooks, test fixtures, audio): no import reads them.
DATA_SUFFIXES = (".npy", ".png", ".jpg", ".jpeg", ".gif", ".ipynb", ".pdf", ".wav", ".flac", ".mp4")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(pyproject: str) -> List[str]:
    """`[project] dependencies` plus the `test` and `study` extras of a pyproject.toml, torch and numpy left out.
    A line-based reader (tomllib is Python >= 3.11 only) for this file's plain lists of strings."""
    text = open(pyproject, encoding="utf-8").read()
    out = []
    for header in (r"^dependencies\s*=\s*\[", r"^test\s*=\s*\[", r"^study\s*=\s*\["):
        m = re.search(header, text, re.M)
        if not m:
            sys.exit("bundle.py: no %r list in %s" % (header, pyproject))
        body = text[m.end():text.index("]", m.end())]
        out += re.findall(r'"([^"]+)"', re.sub(r"#[^\n]*", "", body))
    return [r for r in out if not EXCLUDED.match(re.split(r"[<>=!~;\[ ]", r, 1)[0])]


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []  # type: List[str]

    def handle_starttag(self, tag, attrs):
        if tag == "a":
            self.links += [v for k, v in attrs if k == "href" and v]


def fetch_sdist(name: str, version: str, dest: str) -> str:
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/")
    page = "%s/%s/" % (index, norm(name))
    with urllib.request.urlopen(page, timeout=60) as r:
        parser = _Links()
        parser.feed(r.read().decode("utf-8", "replace"))
    want = re.compile(r"^%s-%s\.tar\.gz$" % (re.escape(norm(name)).replace("\\-", "[-_.]"), re.escape(version)), re.I)
    for href in parser.links:
        url, _, frag = urllib.parse.urljoin(page, href).partition("#")
        fname = urllib.parse.unquote(url.rsplit("/", 1)[-1])
        if want.match(fname):
            break
    else:
        sys.exit("bundle.py: no sdist %s-%s.tar.gz on %s" % (name, version, page))
    with urllib.request.urlopen(url, timeout=300) as r:
        data = r.read()
    sha = hashlib.sha256(data).hexdigest()
    if frag.startswith("sha256=") and frag[7:] != sha:
        sys.exit("bundle.py: %s: sha256 %s, the index says %s" % (fname, sha, frag[7:]))
    kept, dropped, dropped_bytes = _repack(data, os.path.join(dest, fname))
    note = {"file": fname, "url": url, "sha256_original": sha, "bytes_original": len(data),
            "members_dropped": dropped, "bytes_dropped_uncompressed": dropped_bytes,
            "dropped": "data files (%s) under examples/: no code" % " ".join(DATA_SUFFIXES)}
    with open(os.path.join(dest, "sdist-repack.json"), "w") as f:
        json.dump(note, f, indent=1)
    print("%s: %d -> %d bytes (%d data files of examples/ left out)"
          % (fname, len(data), os.path.getsize(os.path.join(dest, fname)), dropped))
    return fname


def _repack(data: bytes, path: str):
    kept = dropped = dropped_bytes = 0
    tmp = path + ".part"
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as src, \
            tarfile.open(tmp, mode="w:gz", compresslevel=9) as dst:
        for m in src:
            parts = m.name.split("/")
            if m.isfile() and "examples" in parts and m.name.lower().endswith(DATA_SUFFIXES):
                dropped += 1
                dropped_bytes += m.size
                continue
            dst.addfile(m, src.extractfile(m) if m.isfile() else None)
            kept += 1
    os.replace(tmp, path)  # atomic: an interrupted run leaves no half sdist behind
    return kept, dropped, dropped_bytes


def freeze(path: str) -> Dict[str, str]:
    """``{normalized name: version}`` of a ``pip list --format freeze`` (or ``pip freeze``) file."""
    out = {}
    for line in open(path, encoding="utf-8"):
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if m:
            out[norm(m.group(1))] = m.group(2)
    return out


def _name_version(fname: str):
    """(normalized name, version) of a wheel or sdist file name."""
    stem = fname[:-len(".tar.gz")] if fname.endswith(".tar.gz") else fname
    name, version = stem.split("-")[:2]
    return norm(name), version


def finish(dest: str, pyver: str, numpy: str, target_freeze: str = "") -> None:
    files = {}  # type: Dict[str, Dict]
    has = freeze(target_freeze) if target_freeze else {}
    target_has = {}  # type: Dict[str, str]
    for fname in sorted(os.listdir(dest)):
        path = os.path.join(dest, fname)
        if not (fname.endswith(".whl") or fname.endswith(".tar.gz")):
            continue
        name, version = _name_version(fname)
        if EXCLUDED.match(name):
            os.remove(path)  # pulled in by the resolution (scipy requires numpy): the target has it
            print("left out (the target has it): %s" % fname)
            continue
        if has.get(name) == version and name != "fairseq-fixed":
            os.remove(path)
            target_has[name] = version
            print("left out (in the target's list): %s" % fname)
            continue
        with open(path, "rb") as f:
            files[fname] = {"bytes": os.path.getsize(path), "sha256": hashlib.sha256(f.read()).hexdigest()}
    total = sum(v["bytes"] for v in files.values())
    manifest = {"python": pyver, "platform": "manylinux x86_64", "resolved_with_numpy": numpy,
                "excluded": "torch, numpy (the target's own are used)", "bytes": total, "files": files,
                "target_has": target_has}
    if os.path.exists(os.path.join(dest, "fairseq-wheel.json")):
        with open(os.path.join(dest, "fairseq-wheel.json")) as f:
            manifest["fairseq_wheel_built_with"] = json.load(f)
    if os.path.exists(os.path.join(dest, "sdist-repack.json")):
        with open(os.path.join(dest, "sdist-repack.json")) as f:
            manifest["fairseq_sdist"] = json.load(f)
    with open(os.path.join(dest, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1, sort_keys=True)
    print("bundle %s: %d files, %.1f MiB (%d bytes), Python %s" % (dest, len(files), total / 2 ** 20, total, pyver))
    if total > LIMIT:
        print("warning: the bundle is over 64 MiB", file=sys.stderr)


def check(dest: str) -> None:
    path = os.path.join(dest, MANIFEST)
    if not os.path.isfile(path):
        sys.exit("install.sh: %s is not a bundle (no %s; build one with --bundle)" % (dest, MANIFEST))
    with open(path) as f:
        manifest = json.load(f)
    here = "%d.%d" % sys.version_info[:2]
    if manifest["python"] != here:
        sys.exit("install.sh: the bundle %s is for Python %s, this interpreter (%s) is %s: build one with "
                 "--bundle DIR --python-version %s" % (dest, manifest["python"], sys.executable, here, here))
    check_files(dest)
    from importlib.metadata import PackageNotFoundError, version
    wrong = []
    for name, want in sorted(manifest.get("target_has", {}).items()):
        try:
            got = version(name)
        except PackageNotFoundError:
            got = "absent"
        if got != want:
            wrong.append("%s %s (the bundle expects %s)" % (name, got, want))
    if wrong:
        sys.exit("install.sh: the bundle %s was built with --target-has for another environment; here: %s. "
                 "Build it again with this node's 'pip list --format freeze'" % (dest, "; ".join(wrong)))


def _stored(path: str) -> bytes:
    """The wheel at ``path`` rewritten with every member stored (ZIP_STORED): the same members,
    names, times and modes, so the same RECORD hashes; only the per-member deflate is gone."""
    out = io.BytesIO()
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            data = src.read(info)
            info.compress_type = zipfile.ZIP_STORED
            dst.writestr(info, data)
    return out.getvalue()


def pack(dest: str, archive: str) -> None:
    """``dest`` as one ``.tar.xz``: wheels stored uncompressed, so that xz compresses across them
    (deflate per member, as in a wheel, leaves most of the redundancy of shared libraries). The
    archive's bundle.json lists the stored wheels' sizes and hashes."""
    path = os.path.join(dest, MANIFEST)
    if not os.path.isfile(path):
        sys.exit("bundle.py: %s is not a finished bundle (no %s)" % (dest, MANIFEST))
    with open(path) as f:
        manifest = json.load(f)
    tmp = archive + ".part"
    files = {}
    with tarfile.open(tmp, mode="w:xz", preset=6) as tar:
        for fname in sorted(manifest["files"]):
            src = os.path.join(dest, fname)
            data = _stored(src) if fname.endswith(".whl") else open(src, "rb").read()
            files[fname] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            info = tarfile.TarInfo(fname)
            info.size, info.mode, info.mtime = len(data), 0o644, int(os.path.getmtime(src))
            tar.addfile(info, io.BytesIO(data))
        packed = dict(manifest, files=files, bytes=sum(v["bytes"] for v in files.values()),
                      packed={"from_bytes": manifest["bytes"], "wheels": "stored uncompressed (ZIP_STORED)"})
        for name, data in ((MANIFEST, json.dumps(packed, indent=1, sort_keys=True).encode()),
                           *((n, open(os.path.join(dest, n), "rb").read()) for n in sorted(os.listdir(dest))
                             if n.endswith(".json") and n != MANIFEST)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    os.replace(tmp, archive)  # atomic: no half archive under the final name
    size = os.path.getsize(archive)
    print("packed %s: %.1f MiB (%d bytes; the directory: %.1f MiB)" % (archive, size / 2 ** 20, size,
                                                                      manifest["bytes"] / 2 ** 20))
    if size > LIMIT:
        print("warning: the packed bundle is over 64 MiB", file=sys.stderr)


def unpack(archive: str, dest: str) -> None:
    """The members of a :func:`pack` archive into ``dest``: plain file names only (no path, no link).
    Their hashes are checked by :func:`check`, as for a bundle directory."""
    if not os.path.isfile(archive):
        sys.exit("install.sh: %s: no such bundle archive" % archive)
    try:
        tar = tarfile.open(archive, mode="r:xz")
    except (tarfile.TarError, EOFError, OSError) as err:
        sys.exit("install.sh: %s is not a bundle archive (.tar.xz made by --bundle DIR --pack): %s" % (archive, err))
    os.makedirs(dest, exist_ok=True)
    with tar:
        for m in tar:
            if not m.isfile() or os.path.basename(m.name) != m.name or m.name.startswith("."):
                sys.exit("install.sh: %s: unexpected member %r (not a bundle archive)" % (archive, m.name))
            with open(os.path.join(dest, m.name), "wb") as f:
                f.write(tar.extractfile(m).read())


def check_files(dest: str) -> None:
    """Every file the manifest lists is there with its sha256."""
    with open(os.path.join(dest, MANIFEST)) as f:
        manifest = json.load(f)
    for fname, want in sorted(manifest["files"].items()):
        if not os.path.isfile(os.path.join(dest, fname)):
            sys.exit("install.sh: the bundle %s lacks %s" % (dest, fname))
        with open(os.path.join(dest, fname), "rb") as f:
            if hashlib.sha256(f.read()).hexdigest() != want["sha256"]:
                sys.exit("install.sh: %s in %s does not match its sha256 in %s" % (fname, dest, MANIFEST))


def prune(unpacked: str) -> None:
    """The data files of fairseq's ``examples/`` removed from an unpacked wheel (a wheel built from
    PyPI's sdist carries them; the bundle's repacked sdist does not)."""
    dropped = dropped_bytes = 0
    for root, _dirs, names in os.walk(unpacked):
        if "examples" not in os.path.relpath(root, unpacked).split(os.sep):
            continue
        for n in names:
            if n.lower().endswith(DATA_SUFFIXES):
                path = os.path.join(root, n)
                dropped_bytes += os.path.getsize(path)
                os.remove(path)
                dropped += 1
    print("pruned %d data files of examples/ (%.1f MB)" % (dropped, dropped_bytes / 1e6))


def built_with() -> str:
    from importlib.metadata import version
    return json.dumps({"python": "%d.%d" % sys.version_info[:2], "torch": version("torch"), "numpy": version("numpy")})


def main(argv: List[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    cmd, args = argv[0], argv[1:]
    if cmd == "requirements" and len(args) == 1:
        print("\n".join(requirements(args[0])))
    elif cmd == "fetch-sdist" and len(args) == 3:
        fetch_sdist(*args)
    elif cmd == "finish" and len(args) in (3, 4):
        finish(*args)
    elif cmd == "check" and len(args) == 1:
        check(args[0])
    elif cmd == "prune" and len(args) == 1:
        prune(args[0])
    elif cmd == "built-with" and not args:
        print(built_with())
    elif cmd == "pack" and len(args) == 2:
        pack(*args)
    elif cmd == "unpack" and len(args) == 2:
        unpack(*args)
    else:
        sys.exit("bundle.py: bad arguments %r (see --help)" % (argv,))


if __name__ == "__main__":
    main(sys.argv[1:])
