"""Layers: which patch series apply to which source, as data.

Layers per source are data in ``recipes/patches.toml`` (or the active profile's own
``recipes/profiles/<profile>/patches.toml``: :func:`layers_file`)::

    [linux]   # a directory of another source's tree, and which of its patches apply
    vendor = [{ from = "ask", dir = "patches/kernel", patches = ["002-...linux_6_12.patch"] }]
    local = ["kernel/patches"]                            # series directories of this project

Vendor layers apply first (in file order), then local layers.  ``{ref}`` in a vendor path is
replaced by the patched source's ``ref``; ``optional = true`` only lets the whole directory be
absent.  Which files a vendor layer selects is :mod:`.inputs`.
"""

from __future__ import annotations

import re
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from .. import series as series_mod
from ..errors import ConfigError, UserError
from ..fsutil import read_toml
from ..refs import EDIT_PREFIX
from ..settings import Settings
from ..sources import Source, load_sources

LAYERS_FILE = "patches.toml"


class Layer(NamedTuple):
    source: str                 # the source the patches apply to
    kind: str                   # "vendor" | "local"
    dir: str                    # vendor: inside the provider's tree; local: inside the project
    provider: str | None = None
    optional: bool = False      # vendor: the whole directory may be absent (loud skip)
    patches: tuple[str, ...] | None = None   # vendor: the explicit list of patch files

    @property
    def id(self) -> str:
        return f"{self.provider}:{self.dir}" if self.kind == "vendor" else self.dir

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "-", self.id).strip("-.") or "layer"


VENDOR_KEYS = ("from", "dir", "patches", "optional")

VENDOR_SHAPE = ('{ from = "SOURCE", dir = "PATH" [, patches = ["NN-name.patch", ...]] '
                '[, optional = true] }')


def layers_file(settings: Settings) -> Path:
    """``recipes/profiles/<profile>/patches.toml`` when the active profile has its own layer
    file, else ``recipes/patches.toml``."""
    if settings.profile != "default":
        own = settings.recipes_dir / "profiles" / settings.profile / LAYERS_FILE
        if own.exists() or own.is_symlink():
            return own
    return settings.recipes_dir / LAYERS_FILE


def _array(table: dict, key: str, where: str) -> list:
    value = table.get(key, [])
    if not isinstance(value, list):
        example = VENDOR_SHAPE if key == "vendor" else '"patches/NAME"'
        raise ConfigError(f"{where}: {key} must be an array (got {type(value).__name__})",
                          fix=f"e.g. {key} = [{example}]")
    return value


def _vendor_layer(name: str, v: object, i: int, where: str,
                  sources: dict[str, Source]) -> Layer:
    """One ``vendor`` entry, validated (see :data:`VENDOR_SHAPE`)."""
    w = f"{where}: vendor[{i}]"
    if not isinstance(v, dict) or set(v) - set(VENDOR_KEYS) \
            or not isinstance(v.get("from"), str) or not isinstance(v.get("dir"), str):
        extra = sorted(set(v) - set(VENDOR_KEYS)) if isinstance(v, dict) else []
        raise ConfigError(f"{w} must be {VENDOR_SHAPE}"
                          + (f" (unknown key(s): {', '.join(map(str, extra))})" if extra else ""))
    if v["from"] not in sources:
        raise ConfigError(f"{w}: no source named {v['from']!r}",
                          fix=f"known sources: {', '.join(sources)}")
    if not isinstance(v.get("optional", False), bool):
        raise ConfigError(f"{w}: optional must be true or false")
    d = _check_rel(v["dir"].replace("{ref}", sources[name].ref), w)
    patches = v.get("patches")
    if patches is not None:
        if not isinstance(patches, list) or not patches \
                or not all(isinstance(x, str) for x in patches):
            raise ConfigError(f"{w}: patches must be a non-empty array of patch file names "
                              "(relative to dir)",
                              fix='e.g. patches = ["002-port-for-this-kernel.patch"]')
        for x in patches:
            series_mod.check_name(x, f"{w}: patches")
        dup = sorted({x for x in patches if patches.count(x) > 1})
        if dup:
            raise ConfigError(f"{w}: patches lists {', '.join(dup)} more than once",
                              fix="list each patch once")
        patches = tuple(patches)
    return Layer(name, "vendor", d, v["from"], v.get("optional", False), patches)


def load_layers(settings: Settings, sources: dict[str, Source] | None = None
                ) -> dict[str, list[Layer]]:
    """``{source name: [vendor layers..., local layers...]}`` from :func:`layers_file`.

    A series listed twice for one source (two entries naming the same directory, also through
    a symbolic link or ``./``) is refused: it would be applied twice.  The shared
    ``recipes/patches.toml`` may name sources a profile leaves out (skipped); a profile's own
    file may not."""
    path = layers_file(settings)
    data = read_toml(path, missing_ok=True)
    if not data:
        return {}
    if sources is None:
        sources = load_sources(settings)
    shared = path == settings.recipes_dir / LAYERS_FILE
    out: dict[str, list[Layer]] = {}
    for name, table in data.items():
        where = f"{path}: [{name}]"
        if name not in sources:
            if settings.profile != "default" and shared:
                continue        # a profile may leave out sources of the shared file
            raise ConfigError(f"{where}: no source named {name!r} in {settings.sources_file}",
                              fix=f"known sources: {', '.join(sources)}")
        if not isinstance(table, dict) or set(table) - {"vendor", "local"}:
            raise ConfigError(f"{where}: only 'vendor' and 'local' keys are allowed")
        layers: list[Layer] = []
        seen: dict[object, str] = {}
        for i, v in enumerate(_array(table, "vendor", where)):
            ly = _vendor_layer(name, v, i, where, sources)
            _once(seen, ("vendor", ly.provider, ly.dir),
                  f"vendor[{i}] = {{ from = {v['from']!r}, dir = {v['dir']!r} }}", where)
            layers.append(ly)
        for i, d in enumerate(_array(table, "local", where)):
            if not isinstance(d, str):
                raise ConfigError(f"{where}: local[{i}] must be a directory path string")
            rel = _check_rel(d, f"{where} local[{i}]")
            _once(seen, ("local", str((settings.project_root / rel).resolve())),
                  f"local[{i}] = {d!r}", where)
            layers.append(Layer(name, "local", rel))
        out[name] = layers
    return out


def _once(seen: dict[object, str], key: object, label: str, where: str) -> None:
    """Refuse a second entry for the same series directory of one source."""
    if key in seen:
        same = key[-1] if key[0] == "local" else f"{key[1]}:{key[2]}"
        raise ConfigError(f"{where}: the same series is listed twice: {seen[key]} and {label} "
                          f"are both {same}; it would be applied twice",
                          fix="remove one of the two entries")
    seen[key] = label


def _check_rel(d: str, where: str) -> str:
    p = PurePosixPath(d)
    if not d or p.is_absolute() or ".." in p.parts or d.startswith("-"):
        raise ConfigError(f"{where}: {d!r} must be a relative path without '..'")
    return str(p)


def resolve_layer(settings: Settings, what: str) -> Layer:
    """A local layer named by its series directory (``patches/ask/cmm``) or by a source name
    that has exactly one local layer."""
    layers = load_layers(settings)
    local = [ly for lys in layers.values() for ly in lys if ly.kind == "local"]
    cand = what.rstrip("/")
    p = Path(cand)
    if p.is_absolute():
        try:
            cand = str(p.resolve().relative_to(settings.project_root.resolve()))
        except ValueError:
            pass
    for ly in local:
        if ly.dir == cand:
            return ly
    if what in layers:
        mine = [ly for ly in layers[what] if ly.kind == "local"]
        if len(mine) == 1:
            return mine[0]
        if mine:
            raise UserError(f"source {what!r} has {len(mine)} local series",
                            fix=f"name one: {', '.join(ly.dir for ly in mine)}")
    vendor = [ly for lys in layers.values() for ly in lys if ly.kind == "vendor"]
    if any(ly.dir == cand or ly.id == cand for ly in vendor):
        raise UserError(f"{what!r} is a vendor series: askbuild does not rewrite vendor patches",
                        fix="carry the change as a local patch of the source instead")
    raise UserError(f"no local series {what!r} in {layers_file(settings)}",
                    fix=f"one of: {', '.join(ly.dir for ly in local) or '(none)'}")


def edit_branch(layer: Layer) -> str:
    return EDIT_PREFIX + layer.slug
