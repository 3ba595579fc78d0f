"""The patch record ``state/patch-<name>.json`` (:meth:`Settings.patch_record`).

It records the base, every patch (layer, file, -pN, sha256, commits) and the head; written
atomically and only after success.  It is trusted as "done" only when it vouches for the tree
(:func:`record_done`): same base and patch bytes, ``askbuild/patched`` exactly at its head and
exactly its commits between base and head.
"""

from __future__ import annotations

from pathlib import Path

from .. import gitutil
from ..errors import UserError
from ..fsutil import read_json
from ..refs import PATCHED
from ..settings import Settings
from .inputs import PatchInput
from .layers import Layer
from .worktree import rev

STATE_SCHEMA = 1


def tree_state(settings: Settings, name: str) -> dict | None:
    """The record of the last successful patch step of ``name`` (None when there is none):
    ``{"schema", "source", "base", "head", "layers": [{id, kind, dir, provider, start, end}],
    "patches": [{layer, kind, file, strip, sha256, commits}]}``."""
    return read_json(settings.patch_record(name))


def record_matches(record: dict | None, base: str, inputs: list[PatchInput]) -> bool:
    """Whether ``record`` (possibly damaged) was made from ``base`` and exactly ``inputs``."""
    if not record or record.get("schema") != STATE_SCHEMA or record.get("base") != base:
        return False
    patches = record.get("patches", [])
    if not isinstance(patches, list) or not all(
            isinstance(p, dict) and all(k in p for k in ("layer", "file", "strip", "sha256"))
            for p in patches):
        return False        # a damaged record is no record: the series is applied again
    old = [[p["layer"], p["file"], p["strip"], p["sha256"]] for p in patches]
    return old == [p.key() for p in inputs]


def record_done(tree: Path, record: dict | None, base: str,
                inputs: list[PatchInput]) -> bool:
    """Whether ``record`` can be trusted as "this tree is done": the same base and patch bytes,
    ``askbuild/patched`` exactly at its head, and the commits from the base to that head
    exactly the recorded ones (a record never vouches for a branch another run changed)."""
    if not record or not record_matches(record, base, inputs):
        return False
    head = record.get("head")
    if not isinstance(head, str) or rev(tree, f"refs/heads/{PATCHED}") != head:
        return False
    chain = gitutil.git(["rev-list", "--reverse", f"{base}..{head}", "--"], cwd=tree,
                        check=False)
    want = [c for p in record.get("patches", []) for c in p.get("commits", [])]
    return chain.returncode == 0 and chain.stdout.split() == want


def layers_with_empty(record: dict, layers: list[Layer]) -> dict:
    """Add layers without patches to the record (start == end), in layer order."""
    have = {ly["id"]: ly for ly in record["layers"]}
    out = []
    pos = record["base"]
    for ly in layers:
        if ly.id in have:
            out.append(have[ly.id])
            pos = have[ly.id]["end"]
        else:
            out.append({"id": ly.id, "kind": ly.kind, "dir": ly.dir, "provider": ly.provider,
                        "start": pos, "end": pos})
    record["layers"] = out
    return record


def record_layer(settings: Settings, record: dict, layer: Layer) -> dict:
    """The entry of ``layer`` in the record (start and end commit)."""
    for ly in record.get("layers", []):
        if ly["id"] == layer.id:
            return ly
    raise UserError(f"series {layer.id} is not in the patch record of {layer.source}",
                    fix=f"run `{settings.command('patch', '--source', layer.source)}` first")
