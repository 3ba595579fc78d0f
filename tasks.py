"""askbuild verbs.  Thin: each verb parses its own options and names one engine function.

Run ``inv --list`` (or ``askbuild --list``) for the verbs and ``inv --help VERB`` for a verb's
options.  Options every verb that reads sources takes (added by ``@verb``,
askbuild/verbs.py): ``--profile`` (sources profile: default, example), ``--offline`` (cache
only), ``--locked`` (refuse to resolve unlocked sources), ``--work-dir``/``--cache-dir``,
``--cross-compile`` (toolchain prefix), ``--debug``.

A verb's body returns the engine call as a function of the ``Settings``; ``@verb`` turns the
common options into those settings and runs the call through ``askbuild.cli.main`` (one message
and exit code per failure, never a traceback).  This file imports neither Invoke nor an engine
module: engine modules are imported inside the bodies, and the Invoke ``Collection`` (``ns``)
is built only when Invoke asks for it, so that ``askbuild VERB`` (askbuild/__main__.py) runs a
verb without Invoke's start-up and ``inv --list`` stays fast.
"""

from __future__ import annotations

from askbuild import cli
from askbuild.verbs import SOURCES, Verbs, verb


@verb(common=("debug",), help={"check": "only report what is missing; install nothing"})
def setup(c, check=False):
    """Install host packages (apt-get): cross compiler, arm64 libraries, qemu, Docker..."""
    from askbuild import hostdeps
    return lambda s: hostdeps.setup(s, check_only=check)


@verb(common=("cross_compile", "debug"))
def doctor(c):
    """Show every host prerequisite with its status and the fix."""
    from askbuild import hostdeps
    return hostdeps.doctor


@verb(iterable=["source"],
      help={"source": "source(s) to lock (repeat or comma-separate); default: all",
            "update": "move the pins of the named sources (all if none named) to their refs"})
def lock(c, source=None, update=False):
    """Resolve refs to commits / tarball hashes and record them in the sources file."""
    from askbuild import locking
    return lambda s: locking.lock(s, cli.split_names(source), update=update)


@verb(memo=True, iterable=["source"],
      help={"source": "source(s) to fetch (repeat or comma-separate); default: all",
            "keep_going": "fetch every other source after a failure; the summary lists all "
                          "failures (exit non-zero if any)",
            "ref": "bring this ref (tag, branch or commit) of the named git source into the "
                   "cache too, for a later --offline rebase; the pin does not move"})
def fetch(c, source=None, keep_going=False, ref=""):
    """Fetch pinned sources into the cache and their work trees, verified against the lock."""
    from askbuild import fetching
    return lambda s: fetching.fetch(s, cli.split_names(source), keep_going=keep_going,
                                    ref=ref or None)


@verb(memo=True, iterable=["source"],
      help={"source": "source(s) to patch (repeat or comma-separate); default: all",
            "check": "apply every series to its locked base in a scratch place and report; "
                     "build trees are not touched (the CI gate)",
            "json": "print the report as JSON (schema: docs/reports.md)",
            "keep_going": "patch every other source after a failure (sources whose vendor "
                          "layer comes from a source that cannot be fetched are skipped); "
                          "the summary lists all failures (exit non-zero if any)"})
def patch(c, source=None, check=False, json=False, keep_going=False):
    """Apply vendor then local patch series to the source work trees (one commit per patch)."""
    from askbuild import patchqueue
    return lambda s: patchqueue.patch(s, cli.split_names(source), check=check, as_json=json,
                                      keep_going=keep_going)


@verb(positional=["source"],
      help={"source": "the source whose local series to replay (e.g. ask)",
            "onto": "the new upstream ref (tag, branch or commit) to rebase onto",
            "dry_run": "go through the whole series without stopping and print the report",
            "continue_": "continue after resolving a conflict (git add the files first)",
            "skip": "drop the conflicting patch and continue",
            "abort": "stop and restore the series files and pin byte for byte",
            "status": "show where a stopped rebase is, its conflicts and the next commands",
            "json": "print the report as JSON (schema: docs/reports.md)"})
def rebase(c, source, onto="", dry_run=False, continue_=False, skip=False, abort=False,
           status=False, json=False):
    """Replay a source's local series onto a new upstream release and report per patch."""
    from askbuild import rebasing
    return lambda s: rebasing.rebase(s, source, onto=onto, dry_run=dry_run, cont=continue_,
                                     skip=skip, abort=abort, status=status, as_json=json)


@verb(positional=["series"],
      help={"series": "series directory (e.g. patches/ask/cmm) or source name"})
def patches_edit(c, series):
    """Open a series as a git branch of commits to edit with ordinary git."""
    from askbuild import patchqueue
    return lambda s: patchqueue.edit(s, series)


@verb(positional=["series"],
      help={"series": "series directory (e.g. patches/ask/cmm) or source name"})
def patches_export(c, series):
    """Write the edited branch back as the series (stable, byte-identical when unchanged)."""
    from askbuild import patchqueue
    return lambda s: patchqueue.export(s, series)


@verb(common=(*SOURCES, "jobs", "cache_remote", "cache_push", "ccache_remote", "insecure"),
      memo=True, iterable=["component"],
      help={"component": "component(s) to build with their dependencies; default: all",
            "keep_going": "build what can be built after a failure",
            "ccache": "use ccache (CCACHE_* settings, e.g. remote storage, pass through)"})
def build(c, component=None, keep_going=False, ccache=False):
    """Cross-compile components for aarch64 into the staging tree, incrementally."""
    from askbuild import building
    return lambda s: building.build(s, cli.split_names(component), keep_going=keep_going,
                                    ccache=ccache)


@verb(memo=True, common=(*SOURCES, "insecure"),
      help={"tag": "image tag (default: dev)",
            "output": "where to write the image archive (default: <work>/image/cmm.tar)",
            "no_load": "only write the archive; do not load it into a Docker engine",
            "board": "dpa configuration profile baked in as the default (e.g. gateway-dk)",
            "partial": "build from what the staging tree holds even when components are "
                       "missing; labelled io.monok8s.askbuild.partial=true with the missing "
                       "list (for iterating on userspace; never a release)",
            "push": "then push the archive to REGISTRY/REPO[:TAG] (same manifest digest)"})
def image(c, tag="dev", output="", no_load=False, board="", partial=False, push=""):
    """Assemble the reproducible arm64 localhost/monok8s/cmm image from the staging tree."""
    from askbuild import imaging

    def call(s):
        built = imaging.image(s, tag=tag, output=output or None, load=not no_load,
                              board=board or None, partial=partial)
        if push:
            from askbuild import registry
            registry.push_image(s, push, tag=tag, archive=output or None)
        return built
    return call


@verb(common=("work_dir", "cache_dir", "insecure", "debug"), positional=["destination"],
      help={"destination": "REGISTRY/REPO[:TAG] to push to (TAG default: the image's tag)",
            "tag": "the built image to push (default: dev)",
            "archive": "push this image archive instead (default: the one inv image wrote)"})
def image_push(c, destination, tag="dev", archive=""):
    """Push the built image archive to an OCI registry; its digest there equals the local one."""
    from askbuild import registry
    return lambda s: registry.push_image(s, destination, tag=tag, archive=archive or None)


@verb(help={"tag": "image tag to test (default: dev)"})
def image_test(c, tag="dev"):
    """Run the image under qemu and check the DaemonSet contract."""
    from askbuild import imagetest
    return lambda s: imagetest.test(s, tag=tag)


@verb(common=(*SOURCES, "jobs", "cache_remote", "cache_push", "ccache_remote", "insecure"),
      help={"tag": "image tag (default: dev)", "no_load": "only write the image archive",
            "retest": "run image.test even when this exact image id already passed it in "
                      "this engine"})
def all(c, tag="dev", no_load=False, retest=False):
    """The main job: setup (when needed), fetch, patch, build, image, image test."""
    from askbuild import pipeline
    return lambda s: pipeline.run_all(s, tag=tag, load=not no_load, retest=retest)


@verb(common=("cache_dir", "cross_compile", "jobs", "debug"),
      help={"mirrors": "directory of mirrors laid out by URL (https://HOST/PATH -> "
                       "DIR/HOST/PATH); see docs/rehearsal.md",
            "work_dir": "the rehearsal's own work directory (default: <work>/rehearsal)",
            "json": "print the report as JSON (schema: docs/rehearsal.md)"})
def rehearse(c, mirrors="", work_dir="", json=False):
    """Fetch, patch --check and build the userspace of the default profile from mirrors of
    the real trees, in a separate work directory; table of what builds and why not."""
    from askbuild import rehearsal
    return lambda s: rehearsal.rehearse(s, mirrors, work_dir=work_dir or None, as_json=json)


@verb(iterable=["source"],
      help={"output": "directory to write the mirror into (served by any static HTTP server "
                      "or file share)",
            "source": "source(s) to mirror (repeat or comma-separate); default: all"})
def mirror(c, output, source=None):
    """Write the locked sources (bare git repos, verified tarballs) as a mirror for a fleet;
    prints the ASKBUILD_MIRRORS line that points runners at it."""
    from askbuild import mirroring
    return lambda s: mirroring.write_mirror(s, output, cli.split_names(source))


@verb(common=(*SOURCES,),
      help={"tag": "the built image the manifests run (default: dev)",
            "output": "write the YAML to this file (default: stdout)",
            "no_namespace": "leave the Namespace mono-system out",
            "max_connections": "CMM_MAX_CONNECTIONS (default 131072)",
            "dpa_configs": "directory of extra DPA XML sets, DIR/<name>/{cdx_cfg.xml,"
                           "cdx_pcd.xml,hxs_pdl_v3.xml,cdx_sp.xml}",
            "by_label": "one DaemonSet per hardware profile, selected by this node label "
                        "(e.g. monok8s.io/hardware-profile); default: select by node name",
            "check": "validate every object against the Kubernetes schema, offline"})
def manifests(c, tag="dev", output="", no_namespace=False, max_connections=131072,
              dpa_configs="", by_label="", check=False):
    """Write the Kubernetes objects that run the built image (DaemonSet cmm, its ConfigMap)."""
    from askbuild import manifests as engine
    return lambda s: engine.write(s, tag=tag, output=output or None,
                                  namespace=not no_namespace, max_connections=max_connections,
                                  dpa_configs=dpa_configs or None, by_label=by_label or None,
                                  check=check)


@verb(common=(*SOURCES,),
      help={"tag": "the built image to rehearse (default: dev)",
            "dpa_configs": "extra DPA XML sets, as for inv manifests"})
def manifests_rehearse(c, tag="dev", dpa_configs=""):
    """Run the generated pod spec under the Docker engine (init container, then cmm), in
    node-name and by-label mode and for a node with no config."""
    from askbuild import manifests_rehearsal
    return lambda s: manifests_rehearsal.rehearse(s, tag=tag, dpa_configs=dpa_configs or None)


@verb(common=("debug",),
      help={"k": "only tests matching this pytest -k expression",
            "fast": "skip tests marked slow (the real kernel build)",
            "pytest_args": "extra arguments passed to pytest"})
def test(c, k="", fast=False, pytest_args=""):
    """Run the test suite (sets up the host first; fails on any failure or no tests)."""
    from askbuild import testing
    return lambda s: testing.run_tests(s, k=k, fast=fast, extra=pytest_args)


VERBS = Verbs(
    [setup, doctor, lock, fetch, patch, rebase, build, all, test, rehearse, mirror],
    {"patches": {"edit": patches_edit, "export": patches_export},
     "image": {"build": image, "test": image_test, "push": image_push},
     "manifests": {"write": manifests, "rehearse": manifests_rehearse}},
    defaults={"image": "build", "manifests": "write"})


def __getattr__(name: str):
    """``ns`` (what Invoke's loader looks for): the Invoke Collection, built on first use, so
    that ``askbuild VERB`` (askbuild/__main__.py) loads this file without importing Invoke."""
    if name in ("ns", "namespace"):
        return VERBS.collection()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
