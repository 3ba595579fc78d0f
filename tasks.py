"""askbuild verbs.  Thin: each task parses options and calls one engine function.

Run ``inv --list`` for the verbs and ``inv --help VERB`` for a verb's options.  Common options:
``--profile`` (sources profile: default, example), ``--offline`` (cache only), ``--locked``
(refuse to resolve unlocked sources), ``--work-dir``/``--cache-dir``, ``--debug`` (tracebacks).
"""

from __future__ import annotations

from invoke import Collection, task

from askbuild import cli

COMMON_HELP = {
    "profile": "sources profile: 'default' (recipes/sources.toml) or a recipes/profiles/ name",
    "offline": "use only the download cache; never touch the network",
    "locked": "refuse to resolve unlocked sources (CI): every source needs a lock entry",
    "work_dir": "work directory (default: ./build or ASKBUILD_WORK_DIR)",
    "cache_dir": "shared download cache (default: the user cache dir or ASKBUILD_CACHE_DIR)",
    "debug": "show tracebacks behind error messages",
}


def _help(**extra: str) -> dict[str, str]:
    return {**COMMON_HELP, **extra}


def _settings(profile, offline, locked, work_dir, cache_dir, jobs=None):
    return dict(profile=profile or None, offline=offline, locked=locked,
                work_dir=work_dir or None, cache_dir=cache_dir or None, jobs=jobs)


@task(help={"check": "only report what is missing; install nothing",
            "debug": COMMON_HELP["debug"]})
def setup(c, check=False, debug=False):
    """Install host packages (apt-get): cross compiler, arm64 libraries, qemu, Docker..."""
    from askbuild import hostdeps
    cli.main(lambda s: hostdeps.setup(s, check_only=check), debug=debug)


@task(help={"debug": COMMON_HELP["debug"]})
def doctor(c, debug=False):
    """Show every host prerequisite with its status and the fix."""
    from askbuild import hostdeps
    cli.main(lambda s: hostdeps.doctor(s), debug=debug)


@task(iterable=["source"],
      help=_help(source="source(s) to lock (repeat or comma-separate); default: all",
                 update="move the pins of the named sources (all if none named) to their refs"))
def lock(c, source=None, update=False, profile="", work_dir="", cache_dir="", debug=False,
         offline=False, locked=False):
    """Resolve refs to commits / tarball hashes and record them in the sources file."""
    from askbuild import locking
    cli.main(lambda s: locking.lock(s, cli.split_names(source), update=update), debug=debug,
             **_settings(profile, offline, locked, work_dir, cache_dir))


@task(iterable=["source"],
      help=_help(source="source(s) to fetch (repeat or comma-separate); default: all",
                 keep_going="fetch every other source after a failure; the summary lists "
                            "all failures (exit non-zero if any)"))
def fetch(c, source=None, keep_going=False, offline=False, locked=False, profile="",
          work_dir="", cache_dir="", debug=False):
    """Fetch pinned sources into the cache and their work trees, verified against the lock."""
    from askbuild import fetching
    cli.main(lambda s: fetching.fetch(s, cli.split_names(source), keep_going=keep_going),
             debug=debug, **_settings(profile, offline, locked, work_dir, cache_dir))


@task(iterable=["source"],
      help=_help(source="source(s) to patch (repeat or comma-separate); default: all",
                 check="apply every series to its locked base in a scratch place and report; "
                       "build trees are not touched (the CI gate)",
                 json="print the report as JSON (schema: docs/reports.md)",
                 keep_going="patch every other source after a failure (sources whose vendor "
                            "layer comes from a source that cannot be fetched are skipped); "
                            "the summary lists all failures (exit non-zero if any)"))
def patch(c, source=None, check=False, json=False, keep_going=False, offline=False,
          locked=False, profile="", work_dir="", cache_dir="", debug=False):
    """Apply vendor then local patch series to the source work trees (one commit per patch)."""
    from askbuild import patchqueue
    cli.main(lambda s: patchqueue.patch(s, cli.split_names(source), check=check, as_json=json,
                                        keep_going=keep_going),
             debug=debug, **_settings(profile, offline, locked, work_dir, cache_dir))


@task(help=_help(onto="the new upstream ref (tag, branch or commit) to rebase onto",
                 dry_run="go through the whole series without stopping and print the report",
                 continue_="continue after resolving a conflict (git add the files first)",
                 skip="drop the conflicting patch and continue",
                 abort="stop and restore the series files and pin byte for byte",
                 json="print the report as JSON (schema: docs/reports.md)"),
      positional=["source"])
def rebase(c, source, onto="", dry_run=False, continue_=False, skip=False, abort=False, json=False,
           offline=False, locked=False, profile="", work_dir="", cache_dir="", debug=False):
    """Replay a source's local series onto a new upstream release and report per patch."""
    from askbuild import rebasing
    cli.main(lambda s: rebasing.rebase(s, source, onto=onto, dry_run=dry_run, cont=continue_,
                                       skip=skip, abort=abort, as_json=json),
             debug=debug, **_settings(profile, offline, locked, work_dir, cache_dir))


@task(help=_help(series="series directory (e.g. patches/ask/cmm) or source name"),
      positional=["series"])
def patches_edit(c, series, profile="", work_dir="", cache_dir="", debug=False,
                 offline=False, locked=False):
    """Open a series as a git branch of commits to edit with ordinary git."""
    from askbuild import patchqueue
    cli.main(lambda s: patchqueue.edit(s, series), debug=debug,
             **_settings(profile, offline, locked, work_dir, cache_dir))


@task(help=_help(series="series directory (e.g. patches/ask/cmm) or source name"),
      positional=["series"])
def patches_export(c, series, profile="", work_dir="", cache_dir="", debug=False,
                   offline=False, locked=False):
    """Write the edited branch back as the series (stable, byte-identical when unchanged)."""
    from askbuild import patchqueue
    cli.main(lambda s: patchqueue.export(s, series), debug=debug,
             **_settings(profile, offline, locked, work_dir, cache_dir))


@task(iterable=["component"],
      help=_help(component="component(s) to build with their dependencies; default: all",
                 jobs="job budget shared by parallel components (default: nproc)",
                 keep_going="build what can be built after a failure",
                 ccache="use ccache (CCACHE_* settings, e.g. remote storage, pass through)"))
def build(c, component=None, jobs="", keep_going=False, ccache=False, offline=False,
          locked=False, profile="", work_dir="", cache_dir="", debug=False):
    """Cross-compile components for aarch64 into the staging tree, incrementally."""
    from askbuild import building
    cli.main(lambda s: building.build(s, cli.split_names(component), keep_going=keep_going,
                                      ccache=ccache),
             debug=debug, **_settings(profile, offline, locked, work_dir, cache_dir, jobs or None))


@task(help=_help(tag="image tag (default: dev)",
                 output="where to write the image archive (default: <work>/image/cmm.tar)",
                 no_load="only write the archive; do not load it into a Docker engine",
                 board="dpa configuration profile baked in as the default (e.g. gateway-dk)",
                 partial="build from what the staging tree holds even when components are "
                         "missing; labelled io.monok8s.askbuild.partial=true with the missing "
                         "list (for iterating on userspace; never a release)"))
def image(c, tag="dev", output="", no_load=False, board="", partial=False, offline=False,
          locked=False, profile="", work_dir="", cache_dir="", debug=False):
    """Assemble the reproducible arm64 localhost/monok8s/cmm image from the staging tree."""
    from askbuild import imaging
    cli.main(lambda s: imaging.image(s, tag=tag, output=output or None, load=not no_load,
                                     board=board or None, partial=partial),
             debug=debug, **_settings(profile, offline, locked, work_dir, cache_dir))


@task(help=_help(tag="image tag to test (default: dev)"))
def image_test(c, tag="dev", offline=False, locked=False, profile="", work_dir="",
               cache_dir="", debug=False):
    """Run the image under qemu and check the DaemonSet contract."""
    from askbuild import imagetest
    cli.main(lambda s: imagetest.test(s, tag=tag), debug=debug,
             **_settings(profile, offline, locked, work_dir, cache_dir))


@task(help=_help(tag="image tag (default: dev)",
                 no_load="only write the image archive",
                 jobs="job budget for the build (default: nproc)"))
def all(c, tag="dev", no_load=False, jobs="", offline=False, locked=False, profile="",
        work_dir="", cache_dir="", debug=False):
    """The main job: setup (when needed), fetch, patch, build, image, image test."""
    from askbuild import pipeline
    cli.main(lambda s: pipeline.run_all(s, tag=tag, load=not no_load), debug=debug,
             **_settings(profile, offline, locked, work_dir, cache_dir, jobs or None))


@task(help={"mirrors": "directory of mirrors laid out by URL (https://HOST/PATH -> "
                       "DIR/HOST/PATH); see docs/rehearsal.md",
            "work_dir": "the rehearsal's own work directory (default: <work>/rehearsal)",
            "cache_dir": COMMON_HELP["cache_dir"],
            "jobs": "job budget for the builds (default: nproc)",
            "json": "print the report as JSON (schema: docs/rehearsal.md)",
            "debug": COMMON_HELP["debug"]})
def rehearse(c, mirrors="", work_dir="", cache_dir="", jobs="", json=False, debug=False):
    """Fetch, patch --check and build the userspace of the default profile from mirrors of
    the real trees, in a separate work directory; table of what builds and why not."""
    from askbuild import rehearsal
    cli.main(lambda s: rehearsal.rehearse(s, mirrors, work_dir=work_dir or None,
                                          as_json=json),
             debug=debug, cache_dir=cache_dir or None, jobs=jobs or None)


@task(help={"k": "only tests matching this pytest -k expression",
            "debug": COMMON_HELP["debug"],
            "fast": "skip tests marked slow (the real kernel build)",
            "pytest_args": "extra arguments passed to pytest"})
def test(c, k="", fast=False, pytest_args="", debug=False):
    """Run the test suite (sets up the host first; fails on any failure or no tests)."""
    from askbuild import testing
    cli.main(lambda s: testing.run_tests(s, k=k, fast=fast, extra=pytest_args), debug=debug)


ns = Collection(setup, doctor, lock, fetch, patch, rebase, build, all, test, rehearse)
ns.add_collection(Collection("patches", edit=patches_edit, export=patches_export))
_image = Collection("image")
_image.add_task(image, name="build", default=True)
_image.add_task(image_test, name="test")
ns.add_collection(_image)
