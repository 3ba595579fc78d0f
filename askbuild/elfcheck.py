"""Build-time check: every ELF file in the final root file system can be loaded there.

The root file system is the union of the layers (later layers win), seen as a table
``path -> (kind, linkname)``.  For every dynamically linked ELF file (executables and shared
libraries) the program interpreter and every ``NEEDED`` library must resolve inside the image,
following symlinks as the kernel and ``ld.so`` would, through ``DT_RPATH``/``DT_RUNPATH``
(``$ORIGIN`` expanded) and the glibc default directories for aarch64.  Files of the application
layer must also be AArch64 ELF files.  Failures raise one :class:`ImageError` naming every binary
and library at fault.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from .errors import ImageError
from .settings import MULTIARCH

DEFAULT_DIRS = [f"lib/{MULTIARCH}", f"usr/lib/{MULTIARCH}", "lib", "usr/lib"]
MAX_HOPS = 40


@dataclass(frozen=True)
class Node:
    kind: str               # oci.FILE, DIR, SYMLINK, ...
    linkname: str = ""


class RootFs:
    """A read-only view of the union of the image layers."""

    def __init__(self, nodes: dict[str, Node]):
        self.nodes = nodes

    def resolve(self, path: str, *, follow_last: bool = True) -> str | None:
        """The canonical path of ``path`` (absolute or relative to /) or None if it does not
        exist.  Symlinks are followed in every component (the last one when asked)."""
        parts = [p for p in path.strip("/").split("/") if p not in ("", ".")]
        done: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part == "..":
                if done:
                    done.pop()
                continue
            cand = "/".join([*done, part])
            node = self.nodes.get(cand)
            if node is None:
                return None
            if node.kind == "symlink" and (parts or follow_last):
                hops += 1
                if hops > MAX_HOPS:
                    return None
                target = node.linkname
                base = [] if target.startswith("/") else list(done)
                parts = [*base, *[p for p in target.split("/") if p not in ("", ".")], *parts]
                done = []
                continue
            done.append(part)
        return "/".join(done)

    def canonical_parent(self, path: str) -> str:
        """``path`` with its directory part resolved through symlinks (the last component is
        kept as is).  Used to place application files under e.g. ``usr/lib`` when ``/lib`` is a
        symlink in the base layer, instead of shadowing the symlink with a directory."""
        parent, name = posixpath.split(path.strip("/"))
        if not parent:
            return name
        parts = parent.split("/")
        for i in range(len(parts), 0, -1):
            head = "/".join(parts[:i])
            resolved = self.resolve(head)
            if resolved is not None:
                rest = parts[i:]
                return "/".join(p for p in [resolved, *rest, name] if p)
        return path.strip("/")

    def is_file(self, path: str) -> bool:
        r = self.resolve(path)
        return bool(r) and self.nodes[r].kind in ("file", "hardlink")


def _search_dirs(path: str, runpath: list[str]) -> list[str]:
    origin = posixpath.dirname(path)
    dirs = []
    for rp in runpath:
        if not rp:
            continue
        d = rp.replace("${ORIGIN}", "/" + origin).replace("$ORIGIN", "/" + origin)
        dirs.append(d.strip("/"))
    return dirs + DEFAULT_DIRS


def check(rootfs: RootFs, elf: dict[str, dict], app_paths: set[str]) -> int:
    """Check every ELF of ``elf`` (path -> facts from :func:`baselayer.elf_facts`).

    Returns the number of ELF files checked; raises :class:`ImageError` listing every problem.
    """
    problems: list[str] = []
    checked = 0
    for path in sorted(elf):
        facts = elf[path]
        if rootfs.resolve(path, follow_last=False) != path:
            continue        # shadowed or moved by a later layer
        in_app = path in app_paths
        if facts.get("broken"):
            problems.append(f"/{path}: not a readable ELF file")
            continue
        if in_app and facts.get("machine") != "EM_AARCH64":
            problems.append(f"/{path}: built for {facts.get('machine')}, not AArch64 "
                            "(was it cross-compiled?)")
            continue
        if facts.get("type") not in ("ET_EXEC", "ET_DYN"):
            continue
        checked += 1
        interp = facts.get("interp") or ""
        if interp and not rootfs.is_file(interp):
            problems.append(f"/{path}: its program interpreter {interp} is not in the image")
        needed = facts.get("needed") or []
        if not needed:
            continue
        dirs = _search_dirs(path, facts.get("runpath") or [])
        for lib in needed:
            if "/" in lib:
                ok = rootfs.is_file(lib)
            else:
                ok = any(rootfs.is_file(f"{d}/{lib}") for d in dirs)
            if not ok:
                problems.append(f"/{path} needs {lib}, which is not in the image (searched "
                                + ", ".join("/" + d for d in dirs) + ")")
    if problems:
        raise ImageError(
            "the image would not run: unresolved libraries\n  " + "\n  ".join(problems),
            fix="install the library's arm64 package on the host (apt-get install "
                "<lib>:arm64) so askbuild can map it to a Debian package, or add the package "
                "to [base] packages in images/cmm/image.toml")
    return checked
