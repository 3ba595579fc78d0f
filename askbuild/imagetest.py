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
  entrypoint's command line (``-f``, ``-n``, ``CMM_MAX_CONNECTIONS``) with a stub cmm.

The vendor cmm and dpa_app need the DPAA hardware, so they are never run for real here;
module loading runs in dry-run mode except for the check that a refused load is a clear error.

A partial image (``inv image --partial``, label ``io.monok8s.askbuild.partial=true``) is never
a release candidate: every check still runs (useful while iterating on userspace), but the check
"image is complete" fails, naming what is missing, so ``inv image.test`` exits non-zero.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from . import console, imaging
from .errors import ImageError, UserError
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
                  if isinstance(t, dict) and (imaging.image_dir(settings) / n).is_file()}
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


def _config_checks(img, board_label: str | None) -> list[Check]:
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
                        "not a release candidate: `inv build`, then `inv image`"))
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


def test(settings: Settings, tag: str = "dev") -> TestReport:
    """Check the loaded ``localhost/monok8s/cmm:<tag>`` against the contract."""
    conf = imaging.load_image_toml(settings)
    ref = f"{conf['repository']}:{tag}"
    client = imaging.docker_client()
    if client is None:
        raise UserError(f"no Docker engine reachable at {imaging.engine_host()}: cannot run "
                        f"{ref}",
                        fix="start one (dockerd --iptables=false --bridge=none "
                            "--storage-driver=vfs &) or set DOCKER_HOST, then `inv image`")
    try:
        import docker.errors
        try:
            img = client.images.get(ref)
        except docker.errors.ImageNotFound as e:
            raise ImageError(f"{ref} is not loaded in the engine at {imaging.engine_host()}",
                             fix="run `inv image` first") from e
        labels = (img.attrs.get("Config") or {}).get("Labels") or {}
        board = labels.get(f"{imaging.LABEL_PREFIX}.board")
        board = None if board in (None, "", "default") else board
        console.step(f"image.test {ref} ({img.id}) under qemu")
        report = TestReport(ref, img.id)
        rec = imaging.read_record(settings)
        if rec and rec.get("ref") == ref and rec.get("image_id") != img.id:
            console.warn(f"{ref} in the engine is {img.id}, but the last `inv image` "
                         f"built {rec.get('image_id')}")
        report.checks += _config_checks(img, board)
        if is_partial(labels):
            console.warn(f"{ref} is a partial image (missing: "
                         f"{labels.get(MISSING_LABEL) or '?'}): running the checks, but it "
                         "cannot pass as a release candidate")
        expected = expected_files(settings, board, partial=is_partial(labels))
        report.checks += run_checks(client, ref, expected)
    finally:
        client.close()
    for c in report.checks:
        console.info(f"  {'ok  ' if c.ok else 'FAIL'} {c.name}"
                     + (f": {c.detail}" if not c.ok and c.detail else ""))
    if report.failed:
        raise ImageError(f"{ref}: {len(report.failed)} of {len(report.checks)} contract checks "
                         "failed: " + "; ".join(c.name for c in report.failed),
                         fix="see the FAIL lines above")
    console.info(f"{ref}: all {len(report.checks)} contract checks passed")
    return report
