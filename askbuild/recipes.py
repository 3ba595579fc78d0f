"""Component recipes: one TOML data file per component under ``recipes/components/``.

A recipe says which source tree a component is built from, which paths of it (and of other
sources) are its inputs, what it depends on, the build steps as argument lists with
placeholders, the environment, and the artifacts it must produce with their place in the staging
tree.  ``_shared.toml`` holds variables shared by several recipes (``[vars]``), e.g. the ASK
feature-flag set, so cdx, dpa_app and cmm never disagree.  The format is documented in
``docs/build.md``.

Loading validates everything before anything is built and names the file and key at fault:
unknown keys, wrong types, unknown dependencies, dependency cycles, unknown placeholders and
recipes that declare no artifact.
"""

from __future__ import annotations

import graphlib
import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ConfigError
from .fsutil import read_toml
from .settings import Settings, got

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]*$")
VAR_RE = re.compile(r"^[a-z][a-z0-9_]*$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SYMBOL_RE = re.compile(r"^CONFIG_[A-Za-z0-9_]+(=(y|m|n|\"[^\"]*\"|[0-9A-Za-z_x-]+)!?)?$")
# {name}, {name:arg}; {{ and }} are literal braces.
PLACEHOLDER_RE = re.compile(r"\{\{|\}\}|\{([^{}]*)\}")

KINDS = ("make", "kernel")
ARTIFACT_KEYS = {"path", "stage", "mode"}
SHARED_KEYS = {"vars"}

#: Placeholders every recipe may use (see docs/build.md for their meaning).
BUILTINS = {
    "cross": "the cross toolchain prefix (Settings.cross_compile, CROSS_COMPILE)",
    "arch": "kernel ARCH (arm64)",
    "host": "GNU host triplet (Settings.host_triplet, derived from the prefix)",
    "jobs": "this component's share of the job budget (make -j)",
    "sysroot": "the pipeline's own sysroot for static libraries (<work>/sysroot)",
    "src": "this component's build tree (a clean export of its inputs)",
    "out": "this component's output directory (<work>/out/<component>)",
    "install": "this component's install directory (<work>/out/<component>/install)",
    "project": "the askbuild project root",
}
#: Placeholders available only to components that depend on a kind = "kernel" component.
KERNEL_BUILTINS = {
    "kernel_dir": "the kernel build directory (KERNELDIR / KDIR for out-of-tree modules)",
    "kernel_src": "the kernel source tree",
    "kernel_release": "the built kernel's release string (uname -r)",
}
#: {name:ARG} placeholders.
PARAMETRIC = {
    "src": "build tree of dependency ARG",
    "install": "install directory of dependency ARG",
    "out": "output directory of dependency ARG",
    "tree": "work tree of source ARG (this recipe's source or one listed in [uses])",
}


@dataclass(frozen=True)
class Artifact:
    path: str              # relative to the build tree, or an absolute placeholder path
    stage: str | None      # path inside the staging tree, or None (kept for dependents only)
    mode: int | None


@dataclass
class Recipe:
    name: str
    file: Path
    kind: str
    source: str
    description: str = ""
    inputs: list[str] = field(default_factory=lambda: ["."])
    uses: dict[str, list[str]] = field(default_factory=dict)
    depends: list[str] = field(default_factory=list)
    parallel: bool = True
    env: dict[str, str] = field(default_factory=dict)
    steps: list[list[str]] = field(default_factory=list)
    host_libs: list[str] = field(default_factory=list)
    artifacts: list[Artifact] = field(default_factory=list)
    # kernel kind
    defconfig: str | None = None
    fragments: list[str] = field(default_factory=list)
    require: list[str] = field(default_factory=list)
    targets: list[str] = field(default_factory=lambda: ["Image", "modules"])
    dtbs: list[str] = field(default_factory=list)
    raw: dict = field(default_factory=dict)   # the table as written, for the recipe hash

    def digest(self, shared_vars: dict) -> str:
        """Hash of the recipe as data (plus the shared variables it references)."""
        used = sorted(v for v in shared_vars if _references(self.raw, v))
        blob = json.dumps({"recipe": self.raw, "vars": {v: shared_vars[v] for v in used}},
                          sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class RecipeSet:
    recipes: dict[str, Recipe]
    vars: dict[str, str | list[str]]
    directory: Path

    def order(self, names: Iterable[str] | None = None) -> list[str]:
        """Names (and all their dependencies) in a dependency-respecting order, the same in
        every process (the graph is given sorted: a set's order changes with the string hash
        seed, and the build manifest records this order)."""
        wanted = self.closure(names)
        ts = graphlib.TopologicalSorter({n: sorted(self.recipes[n].depends)
                                         for n in sorted(wanted)})
        return list(ts.static_order())

    def closure(self, names: Iterable[str] | None = None) -> set[str]:
        names = list(names or [])
        if not names:
            return set(self.recipes)
        unknown = [n for n in names if n not in self.recipes]
        if unknown:
            raise ConfigError(
                f"unknown component(s) {', '.join(unknown)}",
                fix=f"known components (in {self.directory}): {', '.join(sorted(self.recipes))}",
            )
        seen: set[str] = set()
        todo = list(names)
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            todo.extend(self.recipes[n].depends)
        return seen

    def dependents(self, name: str) -> set[str]:
        """Every component that (transitively) depends on ``name``."""
        out: set[str] = set()
        changed = True
        while changed:
            changed = False
            for r in self.recipes.values():
                if r.name not in out and (name in r.depends or out & set(r.depends)):
                    out.add(r.name)
                    changed = True
        return out

    def kernel_of(self, name: str) -> str | None:
        """The kind = "kernel" component ``name`` depends on directly, if any."""
        for d in self.recipes[name].depends:
            if self.recipes[d].kind == "kernel":
                return d
        return None


def _references(obj: object, var: str) -> bool:
    if isinstance(obj, str):
        return any(m.group(1) == var for m in PLACEHOLDER_RE.finditer(obj) if m.group(1))
    if isinstance(obj, list):
        return any(_references(o, var) for o in obj)
    if isinstance(obj, dict):
        return any(_references(o, var) for o in obj.values())
    return False


def recipes_dir(settings: Settings) -> Path:
    """``recipes/components`` (a profile may override it with ``recipes/profiles/<profile>/
    components``: see docs/build.md)."""
    override = settings.recipes_dir / "profiles" / settings.profile / "components"
    if settings.profile != "default" and override.is_dir():
        return override
    return settings.recipes_dir / "components"


def _read(path: Path, *, missing_ok: bool = False) -> dict:
    return read_toml(path, missing_ok=missing_ok)


def _bad(where: str, key: str, what: str, value: object, fix: str | None = None) -> ConfigError:
    """The house-style error: ``<file>: <key>: <what is wrong> (got <value>)``."""
    return ConfigError(f"{where}: {key}: {what} (got {got(value)})", fix=fix)


def _no_nul(where: str, data: dict) -> None:
    """No string anywhere in the recipe (keys included) holds a NUL or another C0 control
    character but tab: they cannot be arguments, environment values or paths.  Iterative, so
    deeply nested junk cannot exhaust the stack."""
    todo: list[tuple[str, object]] = [("", data)]
    while todo:
        key, obj = todo.pop()
        if isinstance(obj, dict):
            for k, v in obj.items():
                sub = f"{key}.{k}" if key else k
                if any(ord(c) < 0x20 and c != "\t" for c in k):
                    raise _bad(where, key or "(top level)", "key with a control character", k)
                todo.append((sub, v))
        elif isinstance(obj, list):
            todo.extend((f"{key}[{i}]", v) for i, v in enumerate(obj))
        elif isinstance(obj, str) and any(ord(c) < 0x20 and c != "\t" for c in obj):
            raise _bad(where, key, "control characters (NUL, newline...) are not allowed", obj)


def _str_list(where: str, key: str, value: object) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _bad(where, key, "must be a list of non-empty strings", value,
                   fix=f'e.g. {key.split("[")[0].split(".")[0]} = ["a", "b"]')
    return list(value)


def _names(where: str, key: str, value: object, what: str) -> list[str]:
    names = _str_list(where, key, value)
    for n in names:
        if not NAME_RE.fullmatch(n):
            raise _bad(where, key, f"{n!r} is not a {what} name", n,
                       fix="names are lower case letters, digits and -_.")
    return names


def _check_rel(where: str, key: str, path: str) -> None:
    p = Path(path)
    if not path or p.is_absolute() or ".." in p.parts or path.startswith("-"):
        raise _bad(where, key, "must be a relative path inside the tree (no '..', no leading "
                   "'/' or '-')", path)


def load_shared(path: Path) -> dict[str, str | list[str]]:
    """The ``[vars]`` of ``_shared.toml`` (``{}`` when there is no such file)."""
    data = _read(path, missing_ok=True)
    unknown = set(data) - SHARED_KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}",
                          fix="a shared file holds only a [vars] table")
    _no_nul(str(path), data)
    table = data.get("vars", {})
    if not isinstance(table, dict):
        raise _bad(str(path), "vars", "must be a table of name = \"string\" or [\"list\"]",
                   table)
    out: dict[str, str | list[str]] = {}
    for k, v in table.items():
        where = f"{path}: vars.{k}"
        if not VAR_RE.fullmatch(k):
            raise ConfigError(f"{where}: variable names are lower case letters, digits and _")
        if k in BUILTINS or k in KERNEL_BUILTINS or k in PARAMETRIC:
            raise ConfigError(f"{where}: {k!r} is a built-in placeholder; choose another name")
        if isinstance(v, str):
            out[k] = v
        else:
            out[k] = _str_list(str(path), f"vars.{k}", v)
        for item in ([v] if isinstance(v, str) else v):
            for m in PLACEHOLDER_RE.finditer(item):
                if m.group(1) is not None and m.group(1) not in BUILTINS:
                    raise ConfigError(f"{where}: unknown placeholder {{{m.group(1)}}}",
                                      fix="shared variables may use only: "
                                          + ", ".join(sorted(BUILTINS)))
    return out


def _parse_uses(r: Recipe, where: str, uses: object) -> None:
    if not isinstance(uses, dict):
        raise _bad(where, "uses", "must be a table: source name = [paths read]", uses)
    for src, paths in uses.items():
        if not NAME_RE.fullmatch(src):
            raise _bad(where, f"uses.{src}", "not a source name", src)
        r.uses[src] = _str_list(where, f"uses.{src}", paths)
        for p in r.uses[src]:
            _check_rel(where, f"uses.{src}", p)


def _parse_env(r: Recipe, where: str, env: object) -> None:
    if not isinstance(env, dict):
        raise _bad(where, "env", "must be a table of NAME = \"string\"", env)
    for k, v in env.items():
        if not ENV_RE.fullmatch(k):
            raise _bad(where, f"env.{k}", "not an environment variable name", k)
        if not isinstance(v, str):
            raise _bad(where, f"env.{k}", "environment values are strings", v)
    r.env = dict(env)


def _parse_steps(r: Recipe, where: str, steps: object) -> None:
    if not isinstance(steps, list):
        raise _bad(where, "steps", "must be a list of argument lists", steps,
                   fix='e.g. steps = [["make", "-j{jobs}"]]')
    for i, step in enumerate(steps):
        r.steps.append(_str_list(where, f"steps[{i}]", step))
        if not r.steps[-1]:
            raise ConfigError(f"{where}: steps[{i}] is empty")
    if r.kind == "make" and not r.steps:
        raise ConfigError(f"{where}: 'steps' is required (a list of argument lists)")


def _parse_artifacts(r: Recipe, where: str, arts: object) -> None:
    if not arts:
        raise ConfigError(
            f"{where}: no 'artifacts' declared",
            fix="declare what the build must produce, e.g. [[artifacts]] path = \"cmm/src/cmm\" "
                "stage = \"usr/bin/cmm\"",
        )
    if not isinstance(arts, list):
        raise _bad(where, "artifacts", "must be an array of tables ([[artifacts]])", arts)
    for i, a in enumerate(arts):
        aw = f"{where}: artifacts[{i}]"
        if not isinstance(a, dict):
            raise ConfigError(f"{aw}: must be a table with 'path' (and 'stage', 'mode') "
                              f"(got {got(a)})")
        unknown = sorted(set(a) - ARTIFACT_KEYS)
        if unknown:
            raise ConfigError(f"{aw}: unknown key(s) {', '.join(unknown)}",
                              fix=f"allowed: {', '.join(sorted(ARTIFACT_KEYS))}")
        path = a.get("path")
        if not isinstance(path, str) or not path:
            raise _bad(aw, "path", "required: a non-empty path string", path)
        stage = a.get("stage")
        if stage is not None:
            if not isinstance(stage, str) or not stage:
                raise _bad(aw, "stage", "must be a path inside the staging tree", stage)
            _check_rel(aw, "stage", stage.replace("{", "").replace("}", ""))
        mode = a.get("mode")
        if mode is not None:
            if not (isinstance(mode, str) and re.fullmatch(r"0?[0-7]{3,4}", mode)):
                raise _bad(aw, "mode", "must be an octal string like \"0755\"", mode)
            mode = int(mode, 8)
        r.artifacts.append(Artifact(path, stage, mode))


@dataclass(frozen=True)
class Key:
    """One key of a recipe table: its default when absent (:data:`ABSENT`: the
    :class:`Recipe` field's own default, and ``parse`` is not called) and the parser that checks
    the value (its errors name the file and key) and sets it on the recipe."""

    name: str
    default: object
    parse: Callable[[Recipe, str, object], None]


ABSENT = object()


def _set_typed(field_name: str, kind: type, what: str) -> Callable[[Recipe, str, object], None]:
    """A parser for a key holding one value of type ``kind``, stored in the field of the same
    name; ``what`` says what is wrong otherwise."""
    def parse(r: Recipe, where: str, value: object) -> None:
        if not isinstance(value, kind):
            raise _bad(where, field_name, what, value)
        setattr(r, field_name, value)
    return parse


def _set_inputs(r: Recipe, where: str, value: object) -> None:
    r.inputs = _str_list(where, "inputs", value)
    for p in r.inputs:
        _check_rel(where, "inputs", p)


def _set_depends(r: Recipe, where: str, value: object) -> None:
    r.depends = _names(where, "depends", value, "component")
    if r.name in r.depends:
        raise ConfigError(f"{where}: depends: a component cannot depend on itself")


def _set_host_libs(r: Recipe, where: str, value: object) -> None:
    from .toolchain import KNOWN_LIBS  # local: toolchain imports nothing from here
    r.host_libs = _str_list(where, "host_libs", value)
    for lib in r.host_libs:
        if lib not in KNOWN_LIBS:
            raise ConfigError(f"{where}: host_libs: unknown library {lib!r}",
                              fix=f"known: {', '.join(sorted(KNOWN_LIBS))}")


def _set_defconfig(r: Recipe, where: str, value: object) -> None:
    if not isinstance(value, str) or not value:
        raise _bad(where, "defconfig", "required: the base configuration (a string)", value)
    r.defconfig = value


def _set_require(r: Recipe, where: str, value: object) -> None:
    r.require = _str_list(where, "require", value)
    for s in r.require:
        if not SYMBOL_RE.fullmatch(s):
            raise ConfigError(f"{where}: require: {s!r} is not CONFIG_NAME, "
                              "CONFIG_NAME=value or CONFIG_NAME=value! (exactly that value)")


def _set_list(field_name: str) -> Callable[[Recipe, str, object], None]:
    """A parser for a plain list-of-strings key stored in the field of the same name."""
    def parse(r: Recipe, where: str, value: object) -> None:
        setattr(r, field_name, _str_list(where, field_name, value))
    return parse


#: The keys of every recipe after ``kind`` and ``source``, checked in this order.
RECIPE_KEYS = (
    Key("description", "", _set_typed("description", str, "must be a string")),
    Key("inputs", ABSENT, _set_inputs),
    Key("uses", {}, _parse_uses),
    Key("depends", [], _set_depends),
    Key("parallel", True, _set_typed("parallel", bool, "must be true or false")),
    Key("env", {}, _parse_env),
    Key("steps", [], _parse_steps),
    Key("host_libs", [], _set_host_libs),
    Key("artifacts", None, _parse_artifacts),
)
#: The keys only a kind = "kernel" recipe has, checked after :data:`RECIPE_KEYS`.
KERNEL_RECIPE_KEYS = (
    Key("defconfig", None, _set_defconfig),
    Key("fragments", [], _set_list("fragments")),
    Key("require", [], _set_require),
    Key("targets", ["Image", "modules"], _set_list("targets")),
    Key("dtbs", [], _set_list("dtbs")),
)
COMMON_KEYS = {"kind", "source"} | {k.name for k in RECIPE_KEYS}
KERNEL_KEYS = {k.name for k in KERNEL_RECIPE_KEYS}


def parse_recipe(name: str, path: Path, data: dict) -> Recipe:
    """Validate one recipe table (every key's type) and build the :class:`Recipe`.  Errors
    name the file and the key: ``<file>: <key>: <what is wrong> (got <value>)``.

    Phases: the name, ``kind`` (which decides the allowed keys), unknown keys, control
    characters anywhere, ``source``, then every key of :data:`RECIPE_KEYS` (and
    :data:`KERNEL_RECIPE_KEYS` for a kernel) in table order."""
    where = f"{path}"
    if not NAME_RE.fullmatch(name):
        raise ConfigError(f"{where}: component name {name!r} is invalid "
                          "(lower case letters, digits, -_.)",
                          fix="rename the file: recipes/components/<name>.toml")
    kind = data.get("kind", "make")
    if not isinstance(kind, str) or kind not in KINDS:
        raise _bad(where, "kind", f"must be one of {', '.join(KINDS)}", kind)
    keys = RECIPE_KEYS + (KERNEL_RECIPE_KEYS if kind == "kernel" else ())
    allowed = {"kind", "source"} | {k.name for k in keys}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}",
                          fix=f"allowed for kind {kind!r}: {', '.join(sorted(allowed))}")
    _no_nul(where, data)
    source = data.get("source")
    if not isinstance(source, str) or not NAME_RE.fullmatch(source):
        raise _bad(where, "source", "required: the name of the source whose tree is built",
                   source, fix='e.g. source = "ask" (a table of the sources file)')
    r = Recipe(name=name, file=path, kind=kind, source=source, raw=data)
    for key in keys:
        value = data.get(key.name, key.default)
        if value is not ABSENT:
            key.parse(r, where, value)
    return r


def _placeholders(recipe: Recipe) -> list[tuple[str, str]]:
    """(key path, placeholder text) for every placeholder of the recipe."""
    found: list[tuple[str, str]] = []

    def walk(obj: object, key: str) -> None:
        if isinstance(obj, str):
            for m in PLACEHOLDER_RE.finditer(obj):
                if m.group(1) is not None:
                    found.append((key, m.group(1)))
        elif isinstance(obj, list):
            for i, o in enumerate(obj):
                walk(o, f"{key}[{i}]")
        elif isinstance(obj, dict):
            for k, o in obj.items():
                walk(o, f"{key}.{k}" if key else k)

    for k in ("env", "steps", "artifacts", "defconfig"):
        if k in recipe.raw:
            walk(recipe.raw[k], k)
    return found


def _check_placeholders(rs: RecipeSet, recipe: Recipe) -> None:
    has_kernel = rs.kernel_of(recipe.name) is not None or recipe.kind == "kernel"
    trees = {recipe.source, *recipe.uses}
    for key, text in _placeholders(recipe):
        where = f"{recipe.file}: {key}"
        name, sep, arg = text.partition(":")
        if sep:
            if name not in PARAMETRIC:
                raise ConfigError(f"{where}: unknown placeholder {{{text}}}",
                                  fix=f"parametric placeholders: "
                                      f"{', '.join('{' + p + ':NAME}' for p in PARAMETRIC)}")
            if name == "tree":
                if arg not in trees:
                    raise ConfigError(
                        f"{where}: {{{text}}}: source {arg!r} is neither this recipe's source "
                        "nor listed in [uses]", fix=f"add [uses] {arg} = [\"<paths read>\"]")
            elif arg not in rs.closure([recipe.name]) - {recipe.name}:
                raise ConfigError(f"{where}: {{{text}}}: {arg!r} is not a dependency of "
                                  f"{recipe.name}", fix=f"add {arg!r} to depends")
            continue
        if name in BUILTINS or name in rs.vars:
            continue
        if name in KERNEL_BUILTINS:
            if recipe.kind == "kernel" and name != "kernel_src":
                raise ConfigError(f"{where}: {{{name}}} cannot be used by the kernel itself")
            if not has_kernel:
                raise ConfigError(f"{where}: {{{name}}} needs a dependency on a kind = "
                                  "\"kernel\" component", fix="add \"kernel\" to depends")
            continue
        known = sorted([*BUILTINS, *KERNEL_BUILTINS, *rs.vars])
        raise ConfigError(f"{where}: unknown placeholder {{{text}}}",
                          fix=f"known: {', '.join(known)} (shared variables live in "
                              f"{rs.directory / '_shared.toml'})")


def load(settings: Settings, directory: Path | None = None) -> RecipeSet:
    """Load and validate every recipe of the active profile."""
    directory = directory or recipes_dir(settings)
    if not directory.is_dir():
        raise ConfigError(f"{directory}: recipes directory not found")
    shared = load_shared(directory / "_shared.toml")
    recipes: dict[str, Recipe] = {}
    for path in sorted(directory.glob("*.toml")):
        if path.name.startswith("_"):
            continue
        recipes[path.stem] = parse_recipe(path.stem, path, _read(path))
    rs = RecipeSet(recipes, shared, directory)
    for r in recipes.values():
        for d in r.depends:
            if d not in recipes:
                raise ConfigError(f"{r.file}: depends: unknown component {d!r}",
                                  fix=f"known components: {', '.join(sorted(recipes))}")
    ts = graphlib.TopologicalSorter({n: r.depends for n, r in recipes.items()})
    try:
        ts.prepare()
    except graphlib.CycleError as e:
        cycle = e.args[1]
        files = ", ".join(str(recipes[n].file) for n in dict.fromkeys(cycle))
        raise ConfigError(f"dependency cycle: {' -> '.join(reversed(cycle))} ({files}: depends)",
                          fix="remove one of these dependencies") from e
    kernels = [r.name for r in recipes.values() if r.kind == "kernel"]
    if len(kernels) > 1:
        raise ConfigError(f"{directory}: more than one kind = \"kernel\" recipe: "
                          f"{', '.join(kernels)}")
    for r in recipes.values():
        _check_placeholders(rs, r)
    return rs


def expand(text: str, values: dict[str, str | list[str]], *, where: str) -> str:
    """Replace placeholders in one string (list values are joined with spaces)."""
    def sub(m: re.Match) -> str:
        tok = m.group(0)
        if tok == "{{":
            return "{"
        if tok == "}}":
            return "}"
        key = m.group(1)
        if key not in values:
            raise ConfigError(f"{where}: placeholder {{{key}}} has no value here")
        v = values[key]
        return " ".join(v) if isinstance(v, list) else v
    return PLACEHOLDER_RE.sub(sub, text)


def expand_args(args: list[str], values: dict[str, str | list[str]], *, where: str) -> list[str]:
    """Expand each argument on its own (never through a shell).  An argument that is exactly one
    list-valued placeholder becomes several arguments."""
    out: list[str] = []
    for a in args:
        m = PLACEHOLDER_RE.fullmatch(a)
        if m and m.group(1) and isinstance(values.get(m.group(1)), list):
            out.extend(values[m.group(1)])  # type: ignore[arg-type]
        else:
            out.append(expand(a, values, where=where))
    return out
