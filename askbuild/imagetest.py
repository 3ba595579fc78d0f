"""``inv image.test``: run the image under qemu and check the DaemonSet contract.

Through the Docker SDK (``platform="linux/arm64"``, ``network_mode="none"``), against the
loaded ``localhost/monok8s/cmm:<tag>``:

* the image config: arm64/linux, the entrypoint, the OCI and askbuild labels;
* inside one container (a fixed check script, expectations passed as environment values):
  the files and paths of the contract, ``cmm -h`` starts, every binary's libraries load
  (``ld.so --list``), ``/etc/config/fastforward.vendor.orig`` and dpa_app's XML files have the
  sha256 of the vendor files in the source trees, ``init_dpa.sh`` (module order and "when not
  loaded", variables, binding at the default paths, missing-file and failed-load errors),
  ``select-dpa-config.sh`` (hardware profile, NODE_NAME, missing directory) and the
  entrypoint's command line (``-f``, ``-n``, ``CMM_MAX_CONNECTIONS``) with a stub cmm;
* in a second container, the image's own entrypoint runs the image's cmm as the DaemonSet runs
  it, with the syslog relay off (``CMM_SYSLOG_RELAY=0``) and cmm's ``-F`` when its usage offers
  it (the local series ``patches/ask/cmm``): cmm must still be serving after
  :data:`SETTLE_SECONDS` (the entrypoint never says ``cmm daemonized``), must have written on
  stdout, and must stop cleanly on SIGTERM (``docker stop``: status 0 within
  :data:`STOP_SECONDS`, the entrypoint's ``cmm stopped after SIGTERM``).  See
  :func:`foreground_checks`.

dpa_app needs the DPAA hardware, so it is never run for real here (cmm is, in the foreground
check: a cmm that cannot serve in a container fails it);
module loading runs in dry-run mode except for the check that a refused load is a clear error.

A partial image (``inv image --partial``, label ``io.monok8s.askbuild.partial=true``) is never
a release candidate: every check still runs (useful while iterating on userspace), but the check
"image is complete" fails, naming what is missing, so ``inv image.test`` exits non-zero.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import console, dockerhost, imaging
from .errors import ImageError, UserError
from .fsutil import read_json, write_json_atomic
from .settings import Settings

REQUIRED_LABELS = [
    "org.opencontainers.image.source", "org.opencontainers.image.revision",
    "org.opencontainers.image.version", "org.opencontainers.image.created",
    f"{imaging.LABEL_PREFIX}.ask.commit", f"{imaging.LABEL_PREFIX}.kernel.release",
    f"{imaging.LABEL_PREFIX}.patches.sha256",
]

PARTIAL_LABEL = f"{imaging.LABEL_PREFIX}.partial"
MISSING_LABEL = f"{imaging.LABEL_PREFIX}.missing"

# Runs inside the image; see the file's header.
CHECK_SCRIPT_FILE = Path(__file__).with_name("imagetest_checks.sh")

# The foreground check (:func:`foreground_checks`).
FOREGROUND = "cmm stays in the foreground without the syslog relay"
STDOUT = "cmm logs on stdout"
CLEAN_STOP = "cmm stops cleanly on SIGTERM"
START_SECONDS = 120     # for cmm's first line on stdout (qemu is slow to start)
SETTLE_SECONDS = 4      # cmm must still be serving this long after that line
STOP_SECONDS = 20       # docker stop: SIGTERM, then SIGKILL after this long
DAEMONIZED = "cmm daemonized"
STOPPED = "cmm stopped after SIGTERM"
# Runs the image's entrypoint (and command) as "$@", with cmm's -F when cmm's usage offers it.
FOREGROUND_SCRIPT = """
usage=$("${CMM_BIN:-/usr/bin/cmm}" -h 2>&1)
case "$usage" in
    *-F*) echo "image.test: cmm -h offers -F: running $* -F" >&2; exec "$@" -F ;;
    *) echo "image.test: cmm -h offers no -F: running $*" >&2; exec "$@" ;;
esac
"""


@dataclass
class Check:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class TestReport:
    __test__ = False  # not a pytest class

    ref: str
    image_id: str
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def expected_files(settings: Settings, board: str | None = None,
                   partial: bool = False) -> dict[str, str]:
    """Image path -> sha256 of the vendor file it must hold (from the source trees).  For a
    ``partial`` image, vendor files that cannot be read are left out (the image lists them as
    missing)."""
    conf = imaging.load_image_toml(settings)
    out: dict[str, str] = {}
    specs = dict(conf["vendor"])
    if board:
        specs.update((conf.get("boards") or {}).get(board, {}))
    files_conf = conf.get("files") or {}
    overridden = {t.get("path") for n, t in files_conf.items()
                  if isinstance(t, dict) and (imaging.image_inputs_dir(settings) / n).is_file()}
    for ipath, spec in specs.items():
        if ipath in overridden:
            continue
        try:
            data, _ = imaging.vendor_bytes(settings, spec, f"image.toml [vendor] {ipath}")
        except ImageError:
            if partial:
                continue
            raise
        out[ipath] = hashlib.sha256(data).hexdigest()
    return out


def _config_checks(img, board_label: str | None, settings: Settings | None = None,
                   tag: str = imaging.DEFAULT_TAG) -> list[Check]:
    """The checks of the image's configuration and labels.  ``settings`` and ``tag``: the
    run's, so the advice for a partial image names the commands with their options (without
    settings it says what to do in words)."""
    attrs = img.attrs
    cfg = attrs.get("Config") or {}
    labels = cfg.get("Labels") or {}
    checks = [
        Check("image architecture arm64", attrs.get("Architecture") == "arm64",
              f"got {attrs.get('Architecture')!r}"),
        Check("image os linux", attrs.get("Os") == "linux", f"got {attrs.get('Os')!r}"),
        Check("entrypoint is the cmm entrypoint",
              (cfg.get("Entrypoint") or [None])[0] == "/usr/share/monok8s/cmm-entrypoint.sh",
              f"got {cfg.get('Entrypoint')!r}"),
    ]
    for key in REQUIRED_LABELS:
        checks.append(Check(f"label {key}", bool(labels.get(key)) and
                            labels.get(key) != "unknown", f"got {labels.get(key)!r}"))
    checks.append(Check("image is complete (not built with --partial)", not is_partial(labels),
                        f"a partial image, missing: {labels.get(MISSING_LABEL) or '?'}; "
                        f"not a release candidate: {_remake(settings, tag)}"))
    return checks


def is_partial(labels: dict) -> bool:
    return labels.get(PARTIAL_LABEL) == "true"


def _parse(output: str) -> list[Check]:
    checks = []
    for line in output.splitlines():
        if line.startswith("CHECK ok "):
            checks.append(Check(line[len("CHECK ok "):], True))
        elif line.startswith("CHECK FAIL "):
            name, _, detail = line[len("CHECK FAIL "):].partition(": ")
            checks.append(Check(name, False, detail))
    return checks


def run_checks(client, ref: str, expected: dict[str, str], timeout: int = 600) -> list[Check]:
    env = {"EXPECT_FILES": "\n".join(f"{p} {s}" for p, s in sorted(expected.items()))}
    container = client.containers.run(
        ref, entrypoint=["/bin/sh", "-c", CHECK_SCRIPT_FILE.read_text()], command=[],
        environment=env, network_mode="none", platform="linux/arm64", detach=True)
    try:
        status = container.wait(timeout=timeout)
        output = container.logs(stdout=True, stderr=True).decode("utf-8", "replace")
    finally:
        container.remove(force=True)
    checks = _parse(output)
    if "CHECK done" not in output:
        checks.append(Check("check script ran to the end", False,
                            f"exit {status.get('StatusCode')}; output tail: "
                            + " | ".join(output.strip().splitlines()[-5:])))
    return checks


def _tail(text: str, n: int = 6) -> str:
    return " | ".join(text.strip().splitlines()[-n:]) or "(nothing)"


def _logs(container, *, stdout: bool = True, stderr: bool = True) -> str:
    return container.logs(stdout=stdout, stderr=stderr).decode("utf-8", "replace")


def _wait_for_stdout(container, timeout: float) -> str:
    """cmm's stdout once it holds a line, or whatever it holds when the entrypoint said cmm
    daemonized, the container ended or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while True:
        out = _logs(container, stderr=False)
        container.reload()
        if out.strip() or container.status == "exited" or time.monotonic() > deadline \
                or DAEMONIZED in _logs(container, stdout=False):
            return out
        time.sleep(0.5)


def foreground_checks(client, ref: str, *, settle: float = SETTLE_SECONDS,
                      start: float = START_SECONDS) -> list[Check]:
    """Run the image's entrypoint (and command) in a container without network, with the syslog
    relay off and cmm's ``-F`` when its usage offers it; check that cmm is still serving after
    ``settle`` seconds without daemonizing, that it wrote on stdout, and that SIGTERM stops the
    container with status 0.  Returns the checks :data:`FOREGROUND`, :data:`STDOUT` and
    :data:`CLEAN_STOP`, each failure saying what was wrong."""
    cfg = client.images.get(ref).attrs.get("Config") or {}
    command = list(cfg.get("Entrypoint") or []) + list(cfg.get("Cmd") or [])
    container = client.containers.run(
        ref, entrypoint=["/bin/sh", "-c", FOREGROUND_SCRIPT, "sh", *command], command=[],
        environment={"CMM_SYSLOG_RELAY": "0"}, network_mode="none", platform="linux/arm64",
        detach=True)
    try:
        stdout = _wait_for_stdout(container, start)
        time.sleep(settle)
        container.reload()
        running = container.status == "running"
        logs = _logs(container)
        checks = [_foreground_check(running, container, logs),
                  Check(STDOUT, bool(stdout.strip()),
                        f"cmm wrote nothing on stdout within {start:.0f} s (with the syslog "
                        f"relay off its messages are lost); the container said: {_tail(logs)}")]
        checks.append(_stop_check(container) if running else
                      Check(CLEAN_STOP, False, "not tried: cmm was not serving"))
    finally:
        container.remove(force=True)
    return checks


def _foreground_check(running: bool, container, logs: str) -> Check:
    """:data:`FOREGROUND`: the container still runs and the entrypoint found no daemon."""
    if DAEMONIZED in logs:
        line = next(ln for ln in logs.splitlines() if DAEMONIZED in ln)
        return Check(FOREGROUND, False,
                     f"cmm daemonized ({line.strip()}): in a container it must stay in the "
                     "foreground (cmm -F, the local series patches/ask/cmm); "
                     f"the container said: {_tail(logs)}")
    if not running:
        status = (container.attrs.get("State") or {}).get("ExitCode")
        return Check(FOREGROUND, False,
                     f"the container ended with status {status} before it was asked to stop: "
                     f"{_tail(logs)}")
    return Check(FOREGROUND, True)


def _stop_check(container) -> Check:
    """:data:`CLEAN_STOP`: ``docker stop`` (SIGTERM) ends the container with status 0 before
    the engine resorts to SIGKILL, and the entrypoint says cmm stopped after SIGTERM."""
    t0 = time.monotonic()
    container.stop(timeout=STOP_SECONDS)
    took = time.monotonic() - t0
    container.reload()
    status = (container.attrs.get("State") or {}).get("ExitCode")
    logs = _logs(container)
    if took >= STOP_SECONDS:
        why = f"still running {STOP_SECONDS} s after SIGTERM (killed)"
    elif status != 0:
        why = f"status {status} after SIGTERM, expected 0"
    elif STOPPED not in logs:
        why = f"the entrypoint never said {STOPPED!r}"
    elif DAEMONIZED in logs:
        why = f"the entrypoint said {DAEMONIZED!r}"
    else:
        return Check(CLEAN_STOP, True)
    return Check(CLEAN_STOP, False, f"{why}; the container said: {_tail(logs)}")


def _remake(settings: Settings | None, tag: str) -> str:
    """How to make a complete image: the build, then the image, as commands with this run's
    options (or in words without settings)."""
    if settings is None:
        return "build every component, then make the image again"
    return (f"`{settings.command('build')}`, then "
            f"`{settings.command('image', *imaging.tag_words(tag))}`")


def engine_id(client) -> str:
    """The engine's own ID (``docker info``), else its address."""
    try:
        return str(client.info().get("ID") or dockerhost.engine_host())
    except Exception:  # noqa: BLE001 - an engine without info: its address names it
        return dockerhost.engine_host()


def _remember_pass(settings: Settings, client, image_id: str) -> None:
    path = settings.image_tests_record
    rec = read_json(path) or {}
    engine = engine_id(client)
    ids = [i for i in rec.get(engine, []) if isinstance(i, str) and i != image_id]
    rec[engine] = (ids + [image_id])[-20:]
    write_json_atomic(path, rec)


def already_passed(settings: Settings, ref: str, image_id: str) -> bool:
    """True when ``ref`` in the reachable engine is exactly ``image_id`` and that image id
    passed :func:`test` in this engine before (the image test of ``inv all`` is skipped)."""
    rec = read_json(settings.image_tests_record) or {}
    if not any(image_id in ids for ids in rec.values() if isinstance(ids, list)):
        return False
    client = imaging.docker_client()
    if client is None:
        return False
    try:
        try:
            loaded = client.images.get(ref).id
        except Exception:  # noqa: BLE001 - not there: test it
            return False
        ids = rec.get(engine_id(client))
        return loaded == image_id and isinstance(ids, list) and image_id in ids
    finally:
        client.close()


def test(settings: Settings, tag: str = imaging.DEFAULT_TAG) -> TestReport:
    """Check the loaded ``localhost/monok8s/cmm:<tag>`` against the contract."""
    conf = imaging.load_image_toml(settings)
    ref = f"{conf['repository']}:{tag}"
    client = imaging.docker_client()
    if client is None:
        raise UserError(f"no Docker engine reachable at {dockerhost.engine_host()}: cannot run "
                        f"{ref}",
                        fix="start one (dockerd --iptables=false --bridge=none "
                            "--storage-driver=vfs &) or set DOCKER_HOST, then "
                            f"`{settings.command('image', *imaging.tag_words(tag))}`")
    try:
        import docker.errors
        try:
            img = client.images.get(ref)
        except docker.errors.ImageNotFound as e:
            raise ImageError(f"{ref} is not loaded in the engine at {dockerhost.engine_host()}",
                             fix=f"run `{settings.command('image', *imaging.tag_words(tag))}` "
                                 "first") from e
        labels = (img.attrs.get("Config") or {}).get("Labels") or {}
        board = labels.get(f"{imaging.LABEL_PREFIX}.board")
        board = None if board in (None, "", "default") else board
        console.step(f"image.test {ref} ({img.id}) under qemu")
        report = TestReport(ref, img.id)
        rec = imaging.read_record(settings)
        if rec and rec.get("ref") == ref and rec.get("image_id") != img.id:
            console.warn(f"{ref} in the engine is {img.id}, but the last `inv image` "
                         f"built {rec.get('image_id')}")
        report.checks += _config_checks(img, board, settings, tag)
        if is_partial(labels):
            console.warn(f"{ref} is a partial image (missing: "
                         f"{labels.get(MISSING_LABEL) or '?'}): running the checks, but it "
                         "cannot pass as a release candidate")
        expected = expected_files(settings, board, partial=is_partial(labels))
        report.checks += run_checks(client, ref, expected)
        report.checks += foreground_checks(client, ref)
        for c in report.checks:
            console.info(f"  {'ok  ' if c.ok else 'FAIL'} {c.name}"
                         + (f": {c.detail}" if not c.ok and c.detail else ""))
        if report.failed:
            raise ImageError(f"{ref}: {len(report.failed)} of {len(report.checks)} contract "
                             "checks failed: " + "; ".join(c.name for c in report.failed),
                             fix="see the FAIL lines above")
        _remember_pass(settings, client, img.id)
    finally:
        client.close()
    console.info(f"{ref}: all {len(report.checks)} contract checks passed")
    return report
