"""The plan of a build: content keys and per-component preconditions.

The key of a component is a sha256 over: the git tree ids of its declared input paths at HEAD
(from the build stamp when it holds them for that commit, :mod:`.stamp`; so a patch touching
``cmm/`` changes only the keys of the components reading ``cmm/``), its
recipe, the shared variables it uses, the project files it reads (kernel fragments), the
toolchain identity (with the package versions of its own ``host_libs``) and its dependencies'
keys.  An unchanged key with the artifacts in place means "nothing to do".
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

from .. import kernel, toolchain
from ..errors import AskbuildError, ConfigError
from ..recipes import Recipe, RecipeSet
from ..settings import Settings
from .inputs import MissingInputs, input_errors, one_error, source_descriptions
from .stamp import BuildStamp

KEY_SCHEMA = 2


@dataclass
class Plan:
    """What a build will do.  ``names``: this run's components (topological order).  Keys are
    computed for *every* recipe whose inputs can be read (the manifest tells which earlier
    builds are still current); ``unknown`` says why the others have none, ``blocked`` why a
    component of this run cannot start (missing inputs, arm64 libraries, host tools)."""

    settings: Settings
    rs: RecipeSet
    names: list[str]                       # topological order
    toolchain: toolchain.Toolchain
    keys: dict[str, str] = field(default_factory=dict)
    key_inputs: dict[str, dict] = field(default_factory=dict)
    ccache: bool = False
    unknown: dict[str, str] = field(default_factory=dict)
    input_errors: dict[str, list[AskbuildError]] = field(default_factory=dict)
    blocked: dict[str, AskbuildError] = field(default_factory=dict)
    stamp: BuildStamp | None = None        # what earlier builds learnt (:mod:`.stamp`)


def _project_inputs(settings: Settings, r: Recipe) -> dict[str, str]:
    """Hashes of the project files a recipe reads (kernel fragments): of the symbols each one
    sets, so editing a comment rebuilds nothing."""
    if r.kind != "kernel":
        return {}
    files = kernel.fragment_files(settings.project_root, r.fragments, f"{r.file}")
    return {str(f.relative_to(settings.project_root)): hashlib.sha256(json.dumps(
        list(kernel.parse_config(f.read_text()).items())).encode()).hexdigest() for f in files}


def compute_keys(plan: Plan, unavailable: dict[str, str] | None = None) -> None:
    """The key of every recipe whose inputs can be read (``unavailable``: {source: why its
    tree is missing}, from :func:`askbuild.building.inputs.prepare_sources`)."""
    s, rs = plan.settings, plan.rs
    stamp = plan.stamp or BuildStamp(s)
    described = source_descriptions(s)
    for name in rs.order():
        r = rs.recipes[name]
        lost = [d for d in r.depends if d not in plan.keys]
        if lost:
            plan.unknown[name] = f"the inputs of {', '.join(lost)} cannot be read"
            continue
        ids, errors = input_errors(s, r, unavailable or {}, described, stamp)
        try:
            project = _project_inputs(s, r)
        except ConfigError as e:
            errors.append(e)
        if errors:
            plan.input_errors[name] = errors
            plan.unknown[name] = "; ".join(e.message for e in errors)
            continue
        inputs = {
            "schema": KEY_SCHEMA,
            "recipe": r.digest(rs.vars),
            "source": {r.source: ids[r.source]},
            "uses": {src: ids[src] for src in sorted(r.uses)},
            "project": project,
            "toolchain": plan.toolchain.identity(r.host_libs),
            "depends": {d: plan.keys[d] for d in sorted(r.depends)},
        }
        blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
        plan.keys[name] = hashlib.sha256(blob.encode()).hexdigest()
        plan.key_inputs[name] = inputs


def check_preconditions(plan: Plan) -> None:
    """``plan.blocked``: for each component of this run whose inputs, arm64 libraries (its
    ``host_libs``) or host tools (``depmod`` for a kernel) are missing, the error saying so.
    Only that component (and what depends on it) is affected."""
    for n in plan.names:
        r = plan.rs.recipes[n]
        errors = list(plan.input_errors.get(n, []))
        libs = toolchain.lib_problems(r.host_libs, multiarch=plan.settings.multiarch)
        if libs:
            errors.append(toolchain.libs_error(libs, f"{n} needs "))
        tools = toolchain.tool_problems(["depmod"] if r.kind == "kernel" else [])
        if tools:
            errors.append(toolchain.tools_error(tools, f"{n} needs "))
        if errors:
            plan.blocked[n] = one_error(errors, MissingInputs)


def not_startable(plan: Plan) -> AskbuildError:
    """Fail-fast: components of this run cannot start; nothing was built."""
    err = one_error([plan.blocked[n] for n in sorted(plan.blocked)], MissingInputs)
    others = sorted(n for n in plan.names if n not in plan.blocked
                    and not set(plan.rs.closure([n])) & set(plan.blocked))
    keep_going = plan.settings.command("build", "--keep-going")
    rest = (f"\nnothing was built; `{keep_going}` builds what does not need "
            f"{', '.join(sorted(plan.blocked))} ({', '.join(others)})" if others else "")
    return type(err)(err.message + rest, fix=err.fix)
