"""Building one component: its directories, its placeholder values, its steps, its artifacts.

:meth:`Component.build` reads as the phases of a component: forget the previous build (record
first, then its staged files), run the steps (or the kernel's configure / build /
modules_install), collect and verify the declared artifacts, stage them, write the done record.
"""

from __future__ import annotations

import io
import shutil
import tarfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import archive, gitutil, kernel, manifest, recipes
from ..errors import BuildFailed, ConfigError
from ..fsutil import sha256_file, write_json_atomic
from ..recipes import Recipe
from ..settings import Settings
from .buildtree import BuildTree, fingerprint
from .jobserver import JobServer
from .keys import Plan
from .records import trusted_record, unstage
from .runner import Runner, Steps, base_env
from .staging import OutsideStaging, copy_tree, in_staging, stage_file

if TYPE_CHECKING:
    from .. import oci
    from .remote import Pulled

ARCH = "arm64"


class Components:
    """How the components of ``plan`` are built (one :meth:`build` per worker thread)."""

    def __init__(self, settings: Settings, plan: Plan, steps: Steps,
                 ccache_bin: Path | None, jobserver: JobServer | None = None) -> None:
        self.settings = settings
        self.plan = plan
        self.rs = plan.rs
        self.steps = steps
        self.ccache_bin = ccache_bin
        self.jobserver = jobserver

    # -- placeholders --------------------------------------------------------------
    def dirs(self, name: str) -> dict[str, Path]:
        """``src`` / ``out`` / ``install`` / ``build`` of component ``name`` (a kernel builds
        out of tree, from its source work tree)."""
        r = self.rs.recipes[name]
        out = self.settings.out_tree(name)
        if r.kind == "kernel":
            return {"src": self.settings.source_tree(r.source), "out": out,
                    "install": out / "install", "build": out / "build"}
        return {"src": out / "src", "out": out, "install": out / "install",
                "build": out / "src"}

    def values(self, name: str, jobs: int, *,
               kernel_release: str | None = None) -> dict[str, str | list[str]]:
        """Placeholder values for ``name``; ``kernel_release`` stands in for a kernel that
        is not built yet (the up-front staging check)."""
        s, r = self.settings, self.rs.recipes[name]
        dirs = self.dirs(name)
        v: dict[str, str | list[str]] = dict(self.rs.vars)
        v.update({
            "cross": s.cross_compile, "arch": ARCH, "host": s.host_triplet,
            "multiarch": s.multiarch, "jobs": str(jobs), "sysroot": str(s.sysroot_dir),
            "src": str(dirs["src"]), "out": str(dirs["out"]), "install": str(dirs["install"]),
            "project": str(s.project_root),
        })
        builtins = dict(v)
        for var, val in self.rs.vars.items():  # shared variables may use built-ins
            w = f"{self.rs.directory / '_shared.toml'}: vars.{var}"
            v[var] = ([recipes.expand(x, builtins, where=w) for x in val]
                      if isinstance(val, list) else recipes.expand(val, builtins, where=w))
        for d in self.rs.closure([name]) - {name}:
            dd = self.dirs(d)
            v[f"src:{d}"] = str(dd["src"])
            v[f"out:{d}"] = str(dd["out"])
            v[f"install:{d}"] = str(dd["install"])
        for src in {r.source, *r.uses}:
            v[f"tree:{src}"] = str(s.source_tree(src))
        k = self.rs.kernel_of(name)
        if k:
            kd = self.dirs(k)
            v["kernel_dir"] = str(kd["build"])
            v["kernel_src"] = str(kd["src"])
            v["kernel_release"] = (kernel_release if kernel_release is not None
                                   else kernel.kernel_release(kd["build"]))
        if r.kind == "kernel":
            v["kernel_src"] = str(dirs["src"])
        return v

    # -- staging paths -------------------------------------------------------------
    def staged_path(self, r: Recipe, i: int, values: dict) -> str | None:
        """Artifact ``i``'s expanded ``stage``, refused with a :class:`ConfigError` naming
        the recipe and the artifact when it would leave the staging tree."""
        a = r.artifacts[i]
        if not a.stage:
            return None
        where = f"{r.file}: artifacts[{i}] (path {a.path!r})"
        stage = recipes.expand(a.stage, values, where=where)
        try:
            in_staging(self.settings.staging_dir, stage)
        except OutsideStaging as e:
            raise ConfigError(
                f"{where}: stage {a.stage!r} (expanded: {stage!r}) leaves the staging tree: {e}; "
                "refused, nothing was staged",
                fix="make 'stage' a relative path inside the staging tree (no placeholder that "
                    "holds an absolute path such as {out} or {project}, no '..'), and remove "
                    "symlinks in the staging tree that point out of it") from None
        return stage

    def check_stages(self) -> None:
        """Up front, before anything is built: every artifact's ``stage`` of every component
        expands to a path inside the staging tree (an unbuilt kernel's release stands in as a
        plain name; the real one is checked again before copying)."""
        for name in self.plan.names:
            r = self.rs.recipes[name]
            if not any(a.stage for a in r.artifacts):
                continue
            values = self.values(name, 1, kernel_release="0.0.0-unbuilt")
            for i in range(len(r.artifacts)):
                self.staged_path(r, i, values)

    # -- one component ---------------------------------------------------------------
    def build(self, name: str, jobs: int) -> dict:
        """Build component ``name`` with ``jobs`` as its ``{jobs}``; returns its done record,
        written last (a failure or a kill leaves none).  A parallel component's steps run under
        the build's jobserver (a make takes the jobs that are free at each moment)."""
        s, r = self.settings, self.rs.recipes[name]
        self.steps.check_cancel()
        self._forget_previous(name)
        dirs = self.dirs(name)
        t0 = time.monotonic()
        js = self.jobserver if r.parallel else None
        with Runner(self.steps, name, s.log_file(name), jobserver=js) as run:
            run.note(f"component {name} key {self.plan.keys[name]}")
            run.note(f"recipe {r.file}")
            values = self.values(name, jobs)
            own_env = self._recipe_env(r, values)
            env = {**base_env(s, self.ccache_bin), **own_env}
            if js:
                flags = " ".join(x for x in (own_env.get("MAKEFLAGS", ""),
                                             js.env()["MAKEFLAGS"]) if x)
                env["MAKEFLAGS"] = flags
                run.note(f"jobserver: MAKEFLAGS={flags}")
            self._fresh_dirs(dirs)
            release, staged_tree, tree = None, None, None
            from . import remote  # (only when something is built or taken)
            before = remote.sysroot_snapshot(s)
            if r.kind == "kernel":
                release, staged_tree = self._build_kernel(run, r, dirs, values, env, jobs)
            else:
                tree = self._run_steps(run, name, r, dirs, values, env, own_env)
            sysroot_files = remote.sysroot_changes(s, before)
            arts = self._collect(run, r, dirs, values)
            self.steps.check_cancel()
            self._stage(r, arts, staged_tree)
            self.steps.check_cancel()
            rec = self._record(name, arts, staged_tree, release, time.monotonic() - t0,
                               run.log_path)
            rec["sysroot_files"] = sysroot_files
            rec["origin"] = {"kind": "built"}
            if tree is not None:
                tree[0].mark_clean([Path(a["file"]) for a in arts])
                rec["build_tree"] = tree[1]
            run.note(f"done in {rec['duration_s']}s")
        write_json_atomic(s.build_record(name), rec)
        return rec

    # -- the shared build cache (:mod:`.remote`) -------------------------------------------
    def take(self, name: str, jobs: int, pulled: Pulled) -> dict:
        """Install the verified remote artifact ``pulled`` of ``name`` as a local build of the
        same key would have left it: the build tree holds the export of its inputs plus its
        artifacts (no objects: its next local build is a clean one), the install tree, the
        kernel build tree's parts, its sysroot files, the staged files; then the done record
        (``origin`` remote).  Nothing is compiled."""
        s, r = self.settings, self.rs.recipes[name]
        self.steps.check_cancel()
        self._forget_previous(name)
        dirs = self.dirs(name)
        t0 = time.monotonic()
        with Runner(self.steps, name, s.log_file(name)) as run:
            run.note(f"component {name} key {self.plan.keys[name]}: taken from the shared "
                     f"build cache {pulled.location} ({pulled.digest}); nothing compiled")
            out = s.out_tree(name)
            if out.exists():
                shutil.rmtree(out)
            self._fresh_dirs(dirs)
            if r.kind != "kernel":
                dirs["src"].mkdir(parents=True, exist_ok=True)
                with tarfile.open(fileobj=io.BytesIO(self._export(r))) as tf:
                    archive.extract_all(tf, dirs["src"], tf.getmembers())
            from . import remote
            sysroot_files = remote.unpack(s, pulled.layer, out)
            values = self.values(name, jobs)
            release, staged_tree = None, None
            if r.kind == "kernel":
                release = kernel.kernel_release(dirs["build"])
                values["kernel_release"] = release
                staged_tree = {"from": str(dirs["install"] / "lib/modules" / release),
                               "dest": _modules_dir(r, s, release)}
            arts = self._collect(run, r, dirs, values)
            self.steps.check_cancel()
            self._stage(r, arts, staged_tree)
            rec = self._record(name, arts, staged_tree, release, time.monotonic() - t0,
                               run.log_path)
            rec["sysroot_files"] = [f for f in sysroot_files
                                    if f not in {_rel_to(a["file"], s.sysroot_dir)
                                                 for a in arts}]
            rec["origin"] = {"kind": "remote", "remote": pulled.location,
                             "digest": pulled.digest}
            rec["build_tree"] = ("taken from the shared build cache: the export of its inputs "
                                 "and its artifacts, no objects (its next local build is a "
                                 "clean build)")
        write_json_atomic(s.build_record(name), rec)
        return rec

    def outputs(self, rec: dict) -> list[oci.Entry]:
        """The layer entries of the shared build cache's artifact of ``rec`` (a done record
        of this run's recipes); :class:`remote.Unusable` when it cannot be one."""
        from . import remote
        name = rec["component"]
        r, dirs = self.rs.recipes[name], self.dirs(name)
        files = remote.output_files(self.settings, rec, install=dirs["install"],
                                    kernel_build=dirs["build"] if r.kind == "kernel" else None)
        return remote.layer_entries(self.settings, files)

    def _forget_previous(self, name: str) -> None:
        """No "done" record while the step runs (a kill at any point means "redo"); then
        remove what the previous build staged."""
        old = trusted_record(self.settings, name)
        self.settings.build_record(name).unlink(missing_ok=True)
        if old:
            unstage(self.settings, old)

    def _recipe_env(self, r: Recipe, values: dict) -> dict[str, str]:
        """The recipe's ``env``, expanded (it goes over :func:`base_env`)."""
        return {k: recipes.expand(val, values, where=f"{r.file}: env.{k}")
                for k, val in r.env.items()}

    def _fresh_dirs(self, dirs: dict[str, Path]) -> None:
        """An empty install directory; the shared sysroot."""
        if dirs["install"].exists():
            shutil.rmtree(dirs["install"])
        dirs["install"].mkdir(parents=True)
        self.settings.sysroot_dir.mkdir(parents=True, exist_ok=True)

    def _export(self, r: Recipe) -> bytes:
        """A tar of ``r``'s input paths at HEAD of its source tree (``git archive``)."""
        src = self.settings.source_tree(r.source)
        paths = [] if any(p in (".", "") for p in r.inputs) else r.inputs
        return gitutil.git(["archive", "--format=tar", "HEAD", "--", *paths], cwd=src,
                           text=False).stdout

    def _run_steps(self, run: Runner, name: str, r: Recipe, dirs: dict[str, Path],
                   values: dict, env: dict[str, str],
                   own_env: dict[str, str]) -> tuple[BuildTree, str]:
        """Bring the inputs into the build tree (only what changed, when the previous tree
        can be trusted: :mod:`.buildtree`), then run the steps.  Returns the tree (marked
        clean by the caller once the component succeeded) and what was done to it."""
        self.steps.check_cancel()
        tree = BuildTree(dirs["src"], dirs["out"] / "tree-state.json",
                         fingerprint(self.plan.key_inputs[name], own_env))
        how = tree.update(self._export(r))
        run.note(f"export {r.source}:{' '.join(r.inputs)} -> {dirs['src']}: {how}")
        for i, step in enumerate(r.steps):
            args = recipes.expand_args(step, values, where=f"{r.file}: steps[{i}]")
            run.run(args, cwd=dirs["src"], env=env)
        return tree, how

    def _collect(self, run: Runner, r: Recipe, dirs: dict[str, Path], values: dict) -> list:
        """The declared artifacts with their digests (every staging path checked); a missing
        one fails the step."""
        arts, missing = [], []
        for i, a in enumerate(r.artifacts):
            where = f"{r.file}: artifacts[{i}]"
            p = Path(recipes.expand(a.path, values, where=where))
            if not p.is_absolute():
                p = dirs["build"] / p
            stage = self.staged_path(r, i, values)
            if not p.is_file():
                missing.append(str(p))
                continue
            digest, size = sha256_file(p)
            arts.append({"path": a.path, "file": str(p), "staged": stage, "mode": a.mode,
                         "sha256": digest, "size": size})
        if missing:
            run.note("declared artifact(s) missing: " + ", ".join(missing))
            raise run.failed("the build finished but declared artifact(s) are missing: "
                             + ", ".join(missing), "")
        return arts

    def _stage(self, r: Recipe, arts: list[dict], staged_tree: dict | None) -> None:
        """Copy the artifacts (and the kernel's modules tree) into the staging tree.  Every
        staging path was checked in :meth:`_collect`, before anything is copied; the copies
        check again right before writing."""
        s = self.settings
        try:
            if staged_tree:
                copy_tree(Path(staged_tree["from"]), s.staging_dir, staged_tree["dest"])
            for a in arts:
                if a["staged"]:
                    stage_file(Path(a["file"]), s.staging_dir, a["staged"], a["mode"])
        except OutsideStaging as e:
            raise ConfigError(f"{r.file}: staging refused: {e}",
                              fix="remove symlinks in the staging tree that point out of "
                                  "it") from None

    def _record(self, name: str, arts: list[dict], staged_tree: dict | None,
                release: str | None, seconds: float, log: Path) -> dict:
        rec = {"component": name, "key": self.plan.keys[name], "artifacts": arts,
               "duration_s": round(seconds, 3), "finished": manifest.now(), "log": str(log)}
        if staged_tree:
            rec["staged_tree"] = staged_tree
        if release:
            rec["kernel_release"] = release
        return rec

    def _build_kernel(self, run: Runner, r: Recipe, dirs: dict[str, Path], values: dict,
                      env: dict[str, str], jobs: int) -> tuple[str, dict]:
        """configure (defconfig + fragments, checked), build, modules_install; returns the
        release and the modules tree to stage."""
        s = self.settings
        src, build = dirs["src"], dirs["build"]
        env.update(kernel.kbuild_env(src))
        cross = s.cross_compile

        def call(args: list[str]) -> None:
            run.run(args, cwd=src, env=env)

        defconfig = Path(recipes.expand(r.defconfig or "", values, where=f"{r.file}: defconfig"))
        if not defconfig.is_absolute():
            defconfig = s.project_root / defconfig
        fragments = kernel.fragment_files(s.project_root, r.fragments, str(r.file))
        run.note(f"configure: {defconfig} + {', '.join(map(str, fragments)) or 'no fragments'}")
        try:
            kernel.configure(call, src=src, build=build, arch=ARCH, cross=cross,
                             defconfig=defconfig, fragments=fragments,
                             require=kernel.require_wants(r.require, f"{r.file}: require"),
                             where=f"{r.file}")
        except BuildFailed as e:       # its message is the part of the log that matters
            run.note(e.message)
            raise run.failed(e.message, e.message) from e
        targets = [*r.targets, *r.dtbs]
        call([*kernel.make_base(src, build, ARCH, cross), f"-j{jobs}", *targets])
        release = kernel.kernel_release(build)
        run.note(f"kernel release {release}")
        dest = dirs["install"]
        kernel.modules_install(call, src=src, build=build, arch=ARCH, cross=cross, dest=dest)
        values["kernel_release"] = release
        return release, {"from": str(dest / "lib/modules" / release),
                         "dest": _modules_dir(r, s, release)}


def _rel_to(path: str, root: Path) -> str | None:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return None


def _modules_dir(r: Recipe, settings: Settings, release: str) -> str:
    """``lib/modules/<release>``, refused when the release would lead it out of the staging
    tree."""
    tree = f"lib/modules/{release}"
    try:
        in_staging(settings.staging_dir, tree)
        if "/" in release:
            raise OutsideStaging(f"{release!r} is not a single path component")
    except OutsideStaging as e:
        raise ConfigError(f"{r.file}: the kernel release {release!r} makes the modules "
                          f"directory {tree!r} leave the staging tree: {e}; refused",
                          fix="fix the kernel's LOCALVERSION / release string") from None
    return tree
