"""The fast tarball import (askbuild.tarimport) gives exactly the commit of the first import.

The oracle is the import as askbuild first did it, spelled out here: ``safe_extract``, ``git
init``, a plain ``git add -A -f`` (one loose object per file), one commit with the fixed
identity, the user's global config off.  Every fixture is imported both ways and the commit
ids compared; the fixtures cover what an archive can hold."""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path

import pytest
from upstreams import tar_bytes

from askbuild import fetching, gitutil, tarimport
from askbuild.archive import safe_extract
from askbuild.errors import UnsafeInputError

MESSAGE = tarimport.import_message("pkg-1.0.tar.gz", "pkg", "1.0", "ab" * 32)


def _oracle(archive: Path, dest: Path, strip: int, message: str = MESSAGE) -> str:
    """The first askbuild import, command for command."""
    safe_extract(archive, dest, strip_components=strip, what="pkg")
    env = {"GIT_CONFIG_GLOBAL": os.devnull}
    gitutil.git(["init", "-q", "--", str(dest)], env=env)
    gitutil.git(["add", "-A", "-f", "--", "."], cwd=dest, env=env)
    gitutil.git(["commit", "-q", "--allow-empty", "--no-verify", "-m", message], cwd=dest,
                env={**gitutil.FIXED_IDENTITY, **env})
    return gitutil.out(["rev-parse", "HEAD"], cwd=dest)


def _both(tmp_path: Path, data: bytes, strip: int = 1) -> tuple[str, str, Path]:
    archive = tmp_path / "pkg-1.0.tar"
    archive.write_bytes(data)
    new = tmp_path / "new"
    commit = tarimport.import_tarball(archive, new, strip_components=strip, what="pkg",
                                      message=MESSAGE)
    return commit, _oracle(archive, tmp_path / "old", strip), new


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]], fmt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes, mode: int = 0o644, **extra) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1_700_000_000
    for k, v in extra.items():
        setattr(info, k, v)
    return info, data


MIXED = [
    ("dir", "pkg-1.0"),
    ("file", "pkg-1.0/README", "hello\n"),
    ("file", "pkg-1.0/configure", "#!/bin/sh\necho ok\n", 0o755),
    ("file", "pkg-1.0/owner-only-exec", "#!/bin/sh\n", 0o700),
    ("file", "pkg-1.0/group-exec-only", "not executable for git\n", 0o654),
    ("file", "pkg-1.0/private", "secret\n", 0o600),
    ("file", "pkg-1.0/empty", ""),
    ("file", "pkg-1.0/one", "x"),
    ("file", "pkg-1.0/binary.bin", bytes(range(256)) * 64),
    ("file", "pkg-1.0/.gitignore", "*.o\nbuild/\n"),
    ("file", "pkg-1.0/shipped.o", "ignored by .gitignore, committed anyway\n"),
    ("file", "pkg-1.0/build/out", "also ignored\n"),
    ("dir", "pkg-1.0/empty-dir"),
    ("dir", "pkg-1.0/a/b/c/d"),
    ("file", "pkg-1.0/a/b/c/d/deep.c", "int deep;\n"),
    ("symlink", "pkg-1.0/link-to-readme", "README"),
    ("symlink", "pkg-1.0/a/link-up", "../configure"),
    ("symlink", "pkg-1.0/dirlink", "a/b"),
    ("symlink", "pkg-1.0/dangling", "does-not-exist"),
    ("hardlink", "pkg-1.0/README.hard", "pkg-1.0/README"),
    ("file", "pkg-1.0/twice", "first version\n"),
    ("file", "pkg-1.0/twice", "second version wins\n"),
    ("file", "pkg-1.0/name with spaces & ünïcode", "odd name\n"),
    ("file", "pkg-1.0/\"quoted\"", "quote in name\n"),
]


def test_mixed_archive_gives_the_first_imports_commit(tmp_path):
    commit, old, tree = _both(tmp_path, tar_bytes(MIXED, compression="gz"))
    assert commit == old
    files = gitutil.out(["ls-files", "-s"], cwd=tree).splitlines()
    modes = {line.split("\t")[1]: line.split()[0] for line in files}
    assert modes["configure"] == modes["owner-only-exec"] == "100755"
    assert modes["group-exec-only"] == modes["README"] == "100644"
    assert modes["link-to-readme"] == modes["dirlink"] == "120000"
    assert "shipped.o" in modes and "build/out" in modes        # .gitignore does not apply
    assert (tree / "empty-dir").is_dir() and "empty-dir" not in modes
    assert (tree / "twice").read_text() == "second version wins\n"
    assert gitutil.out(["status", "--porcelain", "--ignored"], cwd=tree) == ""
    assert gitutil.out(["log", "-1", "--format=%an %ae %at|%B"], cwd=tree).startswith(
        "askbuild askbuild@localhost 0|Import pkg-1.0.tar.gz (pkg 1.0)")


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_and_pax_headers(tmp_path, fmt):
    long_dir = "pkg-1.0/" + "/".join(f"directory-level-{i:02d}" for i in range(8))
    members = [
        _file(f"{long_dir}/{'a-very-long-file-name-' * 6}.c", b"int long_name;\n"),
        _file("pkg-1.0/" + "l" * 180, b"long leaf\n", 0o755),
        _file("pkg-1.0/ünïcödé-ñame.txt", b"unicode\n"),
    ]
    link = tarfile.TarInfo("pkg-1.0/" + "s" * 120)
    link.type, link.linkname = tarfile.SYMTYPE, "t" * 150          # long link target
    members.append((link, None))
    if fmt == tarfile.PAX_FORMAT:
        members.append(_file("pkg-1.0/with-pax-keys", b"pax\n",
                             pax_headers={"comment": "made by a test", "mtime": "1.5",
                                          "SCHILY.xattr.user.test": "x"}))
    commit, old, tree = _both(tmp_path, _tar(members, fmt))
    assert commit == old
    assert len(gitutil.out(["ls-files"], cwd=tree).splitlines()) == len(members)


def test_gitattributes_conversions_give_the_same_blobs(tmp_path):
    """The tree's own .gitattributes convert files as ``git add`` does (text=auto turns CRLF
    into LF in the blob, ident, eol): the fast path must convert exactly the same files."""
    entries = [
        ("file", "pkg-1.0/.gitattributes",
         "* text=auto\n*.ident ident\n*.crlf text eol=crlf\n*.bin binary\n"),
        ("file", "pkg-1.0/dos.c", "int a;\r\nint b;\r\n"),
        ("file", "pkg-1.0/id.ident", "$Id: something $\n"),
        ("file", "pkg-1.0/w.crlf", "line\r\n"),
        ("file", "pkg-1.0/raw.bin", "keep\r\nas is\r\n"),
        ("file", "pkg-1.0/sub/.gitattributes", "*.txt -text\n"),
        ("file", "pkg-1.0/sub/keep.txt", "crlf kept\r\n"),
        ("file", "pkg-1.0/big.c", "x\r\n" * 300_000),
    ]
    commit, old, tree = _both(tmp_path, tar_bytes(entries, compression="xz"))
    assert commit == old
    blob = gitutil.out(["cat-file", "-p", "HEAD:dos.c"], cwd=tree)
    assert "\r" not in blob                                      # the conversion did happen


@pytest.mark.parametrize("strip", [0, 2])
def test_strip_components(tmp_path, strip):
    entries = [("dir", "outer"), ("dir", "outer/inner"),
               ("file", "outer/inner/x.c", "int x;\n"),
               ("file", "outer/inner/sub/y.c", "int y;\n", 0o755)]
    commit, old, tree = _both(tmp_path, tar_bytes(entries, compression="bz2"), strip=strip)
    assert commit == old
    assert (tree / ("outer/inner/x.c" if strip == 0 else "x.c")).is_file()


def test_archive_with_no_files_is_an_empty_commit(tmp_path):
    commit, old, tree = _both(tmp_path, tar_bytes([("dir", "pkg-1.0"),
                                                   ("dir", "pkg-1.0/nothing")]))
    assert commit == old
    assert gitutil.out(["ls-tree", "HEAD"], cwd=tree) == ""


def test_an_unknown_check_in_method_is_refused_before_anything_is_made(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a.c").write_text("a\n")
    with pytest.raises(ValueError, match="'pyhton' is none of python, bulk, plain"):
        tarimport.commit_tree(tmp_path / "t", "m", method="pyhton")
    assert not (tmp_path / "t" / ".git").exists()


def test_blobs_are_packed_not_one_file_each(tmp_path):
    """What makes the import cheap: the files' blobs go into one pack (no loose object file
    per file), and the index is complete (``git status`` has nothing to re-read)."""
    entries = [("dir", "pkg-1.0")] + [("file", f"pkg-1.0/d{i % 7}/f{i}.c", f"int f{i};\n")
                                      for i in range(300)]
    commit, old, tree = _both(tmp_path, tar_bytes(entries))
    assert commit == old
    counts = dict(line.split(": ") for line in
                  gitutil.out(["count-objects", "-v"], cwd=tree).splitlines())
    assert int(counts["in-pack"]) >= 300 and int(counts["packs"]) == 1
    assert int(counts["count"]) < 20                # trees and the commit only
    plain = dict(line.split(": ") for line in
                 gitutil.out(["count-objects", "-v"], cwd=tmp_path / "old").splitlines())
    assert int(plain["count"]) >= 300               # the old way: a file per object
    assert gitutil.out(["status", "--porcelain"], cwd=tree) == ""


HOSTILE = [
    [("file", "/etc/evil", "x")],
    [("dir", "pkg-1.0"), ("file", "pkg-1.0/../../evil", "x")],
    [("dir", "pkg-1.0"), ("symlink", "pkg-1.0/esc", "../../outside")],
    [("dir", "pkg-1.0"), ("symlink", "pkg-1.0/l", "."), ("symlink", "pkg-1.0/l2", "l/../..")],
    [("dir", "pkg-1.0"), ("hardlink", "pkg-1.0/h", "/etc/passwd")],
    [("dir", "pkg-1.0"), ("chr", "pkg-1.0/null")],
    [("dir", "pkg-1.0"), ("fifo", "pkg-1.0/pipe")],
    [("dir", "pkg-1.0"), ("file", "pkg-1.0/.git/config", "[core]\n")],
]


@pytest.mark.parametrize("entries", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_member_refused_with_the_same_message(tmp_path, entries):
    archive = tmp_path / "pkg-1.0.tar.gz"
    archive.write_bytes(tar_bytes(entries))
    with pytest.raises(UnsafeInputError) as plain:
        safe_extract(archive, tmp_path / "plain", strip_components=1, what="pkg")
    with pytest.raises(UnsafeInputError) as fast:
        tarimport.import_tarball(archive, tmp_path / "new", strip_components=1, what="pkg",
                                 message=MESSAGE)
    assert fast.value.message == plain.value.message and "refusing to extract" in \
        fast.value.message
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg-1.0.tar.gz"]   # nothing left


def test_fetch_commits_what_the_first_import_did(project, http_server, tmp_path):
    """Through ``inv fetch``: the work tree's base is the first import's commit id (same
    message, same tree), so existing work trees and patch records stay valid."""
    data = tar_bytes(MIXED, compression="gz")
    url = http_server.add("files/pkg-1.0.tar.gz", data)
    sha = hashlib.sha256(data).hexdigest()
    project.add_tarball("pkg", url, sha256=sha, size=len(data))
    tree = fetching.fetch(project.settings(), ["pkg"])["pkg"]

    archive = tmp_path / "pkg-1.0.tar.gz"
    archive.write_bytes(data)
    old = _oracle(archive, tmp_path / "old", 1,
                  tarimport.import_message("pkg-1.0.tar.gz", "pkg", "1.0", sha))
    assert gitutil.out(["rev-parse", "askbuild/base^{commit}"], cwd=tree) == old
    assert gitutil.out(["rev-parse", "HEAD"], cwd=tree) == old
