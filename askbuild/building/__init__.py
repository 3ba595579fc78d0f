"""``inv build``: cross-compile the selected components, incrementally and in parallel.

How a build runs (details and the reasons in docs/build.md), module by module:

1. :mod:`.engine` -- :func:`build` is the list of phases below.  Load and validate the recipes
   (:mod:`askbuild.recipes`); take the components asked for plus their dependencies.
2. :mod:`.inputs` -- make sure every source work tree they read exists (fetch + patch each
   missing one on its own; a tree that cannot be made, or that is not the current patch series
   on the current lock, is that source's problem only: :class:`MissingInputs`).
3. Check the cross compiler (``settings.cross_compile``) up front (:mod:`askbuild.toolchain`):
   every component needs it.
4. :mod:`.keys` -- compute the content key of every recipe whose inputs can be read (the git
   tree ids of its declared input paths at HEAD, its recipe, the shared variables it uses, the
   toolchain identity with the package versions of its own ``host_libs``, its dependencies'
   keys) and check each selected component's own preconditions: its source trees and input
   paths, its arm64 libraries, ``depmod`` for a kernel.  A component that cannot start stops
   the build before anything runs; with ``keep_going`` it fails alone (its dependents are
   skipped) and everything else is built.
5. Write the early manifest (:mod:`askbuild.manifest`; it also lists the components of earlier
   runs whose done records are still current), then :mod:`.schedule` runs components as a DAG
   (``graphlib`` + a thread pool) within the job budget: one GNU make jobserver for the whole
   build (:mod:`.jobserver`), each running component holding a token, the longest expected
   chain first.  An unchanged key with its artifacts in place is skipped instantly; a changed
   one is rebuilt in its kept build tree with only the changed files brought in
   (:mod:`.buildtree`; a clean build when the recipe, flags, toolchain or a dependency changed,
   or the last build did not finish).  :mod:`.component` builds one component; its "done" record
   (:mod:`.records`, ``settings.build_record``) is removed before it runs and written
   atomically after its artifacts are verified and staged (:mod:`.staging`), so a kill at any
   point leaves no record (and a dirty build tree) and the next run redoes the step from a
   clean build tree.
6. Check every staged module's vermagic, run ``depmod`` (a missing depmod is an error, never a
   silent skip), write the final manifest atomically, and raise the build's error: a
   :class:`~askbuild.errors.BuildFailed` (exit 2) with each failing step's last lines and log
   (a step's failure is a :class:`StepError` carrying them), or, when every failure is a
   component that could not start, their :class:`~askbuild.errors.UserError` (exit 1).

One build at a time per work directory (the work-dir lock, :mod:`askbuild.runlock`).  Every step
runs in its own process group under a small supervisor (:mod:`.runner`), so stopping the build
-- fail-fast, SIGTERM, SIGINT, even ``kill -9`` of askbuild -- stops make and every compiler it
started; an interrupted build records ``interrupted`` and leaves no done record for the
unfinished components.  Nothing is ever staged (or deleted) outside the staging tree: each
staging path is checked after placeholder expansion and symlink resolution
(:func:`in_staging`).  ``--ccache``: :mod:`.ccache`.
"""

from __future__ import annotations

from .engine import build, run_depmod
from .inputs import MissingInputs
from .records import read_record, trusted_record
from .runner import StepError
from .staging import OutsideStaging, in_staging

__all__ = ["MissingInputs", "OutsideStaging", "StepError", "build", "in_staging", "read_record",
           "run_depmod", "trusted_record"]
