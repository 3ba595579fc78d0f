"""GNU tar extracts the checked archive (askbuild.archive, issue 9): the tree it leaves is the
tree Python's own extraction leaves (names, types, contents, modes after the ``data`` rules,
link targets, times), for every kind of member, compression and ``strip_components``."""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile
import time
from pathlib import Path

import pytest
from test_tarimport import MIXED, _file, _tar
from upstreams import tar_bytes

from askbuild import archive as archive_mod
from askbuild.archive import safe_extract
from askbuild.errors import SourceError, UnsafeInputError


def _snapshot(root: Path) -> dict[str, tuple]:
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in (*dirnames, *filenames):
            p = Path(dirpath, n)
            st = os.lstat(p)
            rel = p.relative_to(root).as_posix()
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):          # (a parent no member names: "now")
                when = "now" if st.st_mtime > time.time() - 600 else int(st.st_mtime)
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), when)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), int(st.st_mtime), st.st_nlink,
                            hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _both(tmp_path: Path, data: bytes, monkeypatch, strip: int = 1, name: str = "a.tar"
          ) -> tuple[dict, dict]:
    archive = tmp_path / name
    archive.write_bytes(data)
    assert archive_mod._gnu_tar() is not None          # the path under test is GNU tar's
    gnu = _snapshot(safe_extract(archive, tmp_path / "gnu", strip_components=strip, what="t"))
    with monkeypatch.context() as m:
        m.setattr(archive_mod, "_gnu_tar", lambda: None)
        py = _snapshot(safe_extract(archive, tmp_path / "py", strip_components=strip,
                                    what="t"))
        # and as on a Python without the data filter (Debian bookworm's 3.11.2)
        m.setattr(archive_mod, "HAS_DATA_FILTER", False)
        old_py = _snapshot(safe_extract(archive, tmp_path / "py-3.11.2",
                                        strip_components=strip, what="t"))
    assert _dirs_755(old_py) == _dirs_755(py)
    return gnu, py


def _dirs_755(snap: dict) -> dict:
    """Directory modes: Python's data filter leaves members' directories 0700 (3.11.4+) or
    mode & 0755 (3.11.2); GNU tar gives mode & 0755.  Compare everything else exactly."""
    return {k: (v[0], *v[2:]) if v[0] == "dir" else v for k, v in snap.items()}


@pytest.mark.parametrize("compression", ["", "gz", "bz2", "xz"])
def test_every_member_kind_extracts_as_python_does(tmp_path, monkeypatch, compression):
    gnu, py = _both(tmp_path, tar_bytes(MIXED, compression=compression), monkeypatch)
    assert _dirs_755(gnu) == _dirs_755(py)
    assert gnu["configure"][1] == 0o755 and gnu["private"][1] == 0o600
    assert gnu["group-exec-only"][1] == 0o644          # not executable by its owner: no x
    assert gnu["README"][3] == 2                        # the hard link is one file
    assert all(v[1] == 0o755 for v in gnu.values() if v[0] == "dir")


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_long_names_formats_and_special_modes(tmp_path, monkeypatch, fmt):
    deep = "pkg-1.0/" + "/".join(f"level-{i:02d}" for i in range(6))
    members = [_file(f"{deep}/{'n' * 60}.c", b"int x;\n"),
               _file("pkg-1.0/setuid", b"#!/bin/sh\n", 0o4775),
               _file("pkg-1.0/sticky-group-write", b"x\n", 0o1664),
               _file("pkg-1.0/read-only", b"ro\n", 0o444)]
    if fmt != tarfile.USTAR_FORMAT:
        members.append(_file("pkg-1.0/" + "l" * 150, b"long leaf\n", 0o755))
    gnu, py = _both(tmp_path, _tar(members, fmt), monkeypatch)
    assert _dirs_755(gnu) == _dirs_755(py)
    assert gnu["setuid"][1] == 0o755 and gnu["sticky-group-write"][1] == 0o644
    assert gnu["read-only"][1] == 0o644


def test_dot_slash_names_and_deeper_strip(tmp_path, monkeypatch):
    """``./pkg/x`` (GNU tar would count the ``.`` as a component) and two stripped levels."""
    entries = [("dir", "./outer"), ("dir", "./outer/inner"),
               ("file", "./outer/inner/a.c", "int a;\n"),
               ("file", "./outer/inner/sub/run", "#!/bin/sh\n", 0o755)]
    gnu, py = _both(tmp_path, tar_bytes(entries, compression="gz"), monkeypatch, strip=2)
    assert set(gnu) == {"a.c", "sub", "sub/run"}
    assert _dirs_755(gnu) == _dirs_755(py)


def test_a_corrupt_compressed_archive_is_a_clear_error_and_leaves_nothing(tmp_path):
    data = bytearray(tar_bytes(MIXED, compression="xz"))
    data[len(data) // 2] ^= 0xFF
    archive = tmp_path / "pkg-1.0.tar.xz"
    archive.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="cannot extract pkg-1.0.tar.xz") as e:
        safe_extract(archive, tmp_path / "out", strip_components=1, what="pkg")
    assert "corrupt" in e.value.fix
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pkg-1.0.tar.xz"]


# -- streaming: the decompressor, Python's checks and GNU tar run at once -----------------

def _children() -> list[str]:
    """Names of this process's live children (a tar or xz left running would show here)."""
    me = str(os.getpid())
    out = []
    for d in Path("/proc").iterdir():
        try:
            stat_line = (d / "stat").read_text()
        except OSError:
            continue
        fields = stat_line.rsplit(")", 1)[1].split()
        if fields[1] == me and fields[0] != "Z":
            out.append(stat_line.split("(", 1)[1].rsplit(")", 1)[0])
    return out


def _refused_leaving_nothing(tmp_path: Path, data: bytes, name: str, exc=SourceError):
    archive = tmp_path / name
    archive.write_bytes(data)
    area = tmp_path / "area"
    area.mkdir()
    with pytest.raises(exc) as e:
        safe_extract(archive, area / "out", strip_components=1, what="pkg")
    assert list(area.iterdir()) == []                  # no tree, no temporary directory
    assert not {"tar", "xz", "gzip", "bzip2"} & set(_children())
    return e.value


def test_a_hostile_member_after_many_good_ones_stops_tar_and_leaves_nothing(tmp_path):
    """GNU tar has extracted the good members when Python reaches the bad one."""
    entries = [("dir", "pkg-1.0"),
               *[("file", f"pkg-1.0/f{i:04d}.c", f"int v{i};\n" * 50) for i in range(400)],
               ("symlink", "pkg-1.0/evil", "/etc"), ("file", "pkg-1.0/after", "x\n")]
    err = _refused_leaving_nothing(tmp_path, tar_bytes(entries, compression="xz"),
                                   "pkg-1.0.tar.xz", UnsafeInputError)
    assert "'pkg-1.0/evil'" in str(err) and "absolute path" in str(err)


@pytest.mark.parametrize("compression,suffix,cut,words", [
    ("xz", ".tar.xz", None, "xz: (stdin): Unexpected end of input"),
    ("gz", ".tar.gz", None, "gzip: stdin: unexpected end of file"),
    ("", ".tar", 1024 + 20 * (512 + 4096) + 2000, "unexpected end of data"),   # in f20's data
    ("", ".tar", 1024 + 20 * (512 + 4096) + 100, "unexpected end of data"),    # in its header
])
def test_a_truncated_archive_names_the_tool_and_its_reason(tmp_path, compression, suffix, cut,
                                                           words):
    entries = [("dir", "pkg-1.0"),
               *[("file", f"pkg-1.0/f{i}.bin", os.urandom(4096)) for i in range(40)]]
    data = tar_bytes(entries, compression=compression)
    cut = cut or len(data) * 2 // 3
    err = _refused_leaving_nothing(tmp_path, data[:cut], f"pkg-1.0{suffix}")
    assert f"cannot extract pkg-1.0{suffix}: {words}" in str(err)
    assert "corrupt" in err.fix


def test_a_corrupt_header_in_the_middle_is_refused_not_cut_short(tmp_path):
    """Python's tar reader stops quietly at a bad header after the first member; what
    follows would be an archive cut short, or members only GNU tar reads."""
    entries = [("dir", "pkg-1.0"), ("file", "pkg-1.0/a", "a\n"), ("file", "pkg-1.0/b", "b\n"),
               ("file", "pkg-1.0/c", "c\n")]
    data = bytearray(tar_bytes(entries, compression=""))
    at = data.index(b"pkg-1.0/b")                     # the header of b
    data[at + 148:at + 156] = b"garbage!"             # its checksum field
    err = _refused_leaving_nothing(tmp_path, bytes(data), "pkg-1.0.tar")
    assert f"byte {at} of the tar is neither a member header" in str(err)


def test_a_second_archive_after_the_end_is_refused(tmp_path):
    """GNU tar and Python would both stop at the first end marker: the rest is refused rather
    than left out without a word."""
    first = tar_bytes([("dir", "pkg-1.0"), ("file", "pkg-1.0/a", "a\n")], compression="")
    second = tar_bytes([("file", "pkg-1.0/hidden", "b\n")], compression="")
    err = _refused_leaving_nothing(tmp_path, first + second, "pkg-1.0.tar")
    assert "data after the end" in str(err)


def test_without_the_decompressor_program_python_decompresses(tmp_path, monkeypatch):
    data = tar_bytes(MIXED, compression="xz")
    (tmp_path / "a.tar.xz").write_bytes(data)
    with_xz = _snapshot(safe_extract(tmp_path / "a.tar.xz", tmp_path / "xz",
                                     strip_components=1, what="t"))
    monkeypatch.setattr(archive_mod, "_DECOMPRESSORS",
                        tuple((m, "askbuild-no-such-program", o)
                              for m, _, o in archive_mod._DECOMPRESSORS))
    python = _snapshot(safe_extract(tmp_path / "a.tar.xz", tmp_path / "py",
                                    strip_components=1, what="t"))
    assert with_xz == python and with_xz["README"][3] == 2
