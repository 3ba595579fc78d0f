"""OCI distribution registries, through skopeo: ``inv image.push`` / ``inv image --push`` and
the client of the shared build cache (:mod:`askbuild.building.remote`).

skopeo (Debian) does the talking: it reads credentials the usual way (``REGISTRY_AUTH_FILE``,
``$XDG_RUNTIME_DIR/containers/auth.json``, ``~/.docker/config.json``), so askbuild never sees,
prints or logs them, and every child gets its arguments as a list (no shell).  What askbuild
adds:

* a destination is checked against the reference grammar before skopeo sees it
  (:func:`parse_reference`: ``HOST[:PORT]/REPO[:TAG|@sha256:...]``, never a leading ``-``);
* TLS verification is off only for ``127.0.0.1``, ``localhost``, ``[::1]`` and the registries
  the user marks insecure (``--insecure``, ``[registry] insecure``); a plain-HTTP registry
  otherwise fails with a message naming those;
* the image archive (:mod:`askbuild.oci`: an OCI image layout in a tar) is copied with
  ``--preserve-digests`` from ``oci-archive:``: the registry holds the same bytes, so the
  manifest digest there equals the local one (checked after the push), and blobs the registry
  already has are not uploaded again;
* skopeo's failures become one :class:`RegistryError` each (unreachable, credentials refused,
  plain HTTP, a digest mismatch), with the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import console, oci, procs
from .errors import AskbuildError, MissingToolError, UserError
from .fsutil import read_json
from .settings import REGISTRY_HOST_RE, REPO_RE, Settings

SKOPEO = "skopeo"
#: Registries that are always reached without TLS verification (tests, a registry on this host).
LOCAL_HOSTS = ("127.0.0.1", "localhost", "[::1]")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
TIMEOUT_S = 600
#: skopeo's words for each kind of failure (its messages come from containers/image).
_KINDS = (
    ("tampered", ("digest did not match", "digest mismatch", "does not match digest",
                  "computed digest")),
    ("absent", ("manifest unknown", "name unknown", "not found")),
    ("plain-http", ("server gave http response to https client",)),
    ("auth", ("unauthorized", "authentication required", "denied",
              "invalid username/password")),
    ("tls", ("x509:", "certificate", "tls:")),
    ("unreachable", ("connection refused", "no such host", "i/o timeout", "dial tcp",
                     "network is unreachable", "connection reset", "unexpected eof",
                     "server misbehaving", "timeout")),
)


class RegistryError(UserError):
    """A registry could not be reached or refused an operation (exit 1).  ``kind``: one of
    ``unreachable``, ``auth``, ``plain-http``, ``tls``, ``tampered``, ``absent``, ``other``."""

    def __init__(self, message: str, *, fix: str | None = None, kind: str = "other") -> None:
        super().__init__(message, fix=fix)
        self.kind = kind


@dataclass(frozen=True)
class Reference:
    """``HOST[:PORT]/REPO`` plus a tag or a digest."""

    host: str
    repo: str
    tag: str = ""
    digest: str = ""

    @property
    def name(self) -> str:
        return f"{self.host}/{self.repo}"

    def __str__(self) -> str:
        if self.digest:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag}" if self.tag else self.name

    def docker(self) -> str:
        """skopeo's transport form: ``docker://HOST/REPO:TAG`` (or ``@DIGEST``)."""
        return f"docker://{self}"

    def with_tag(self, tag: str) -> Reference:
        return Reference(self.host, self.repo, tag=tag)

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.host, self.repo, digest=digest)


def parse_reference(text: object, *, what: str = "DESTINATION",
                    default_tag: str = "") -> Reference:
    """``HOST[:PORT]/REPO[:TAG|@sha256:HEX]`` checked against the OCI grammar (a host is
    required: askbuild never guesses docker.io); a :class:`UserError` naming ``what`` else."""
    fix = ("give HOST[:PORT]/REPOSITORY[:TAG], e.g. registry.example:5000/monok8s/cmm:1.0 "
           "(lower-case repository path; tag: letters, digits, '_', '.', '-')")
    if not isinstance(text, str) or not text or text.startswith("-") or any(
            c.isspace() or c == "\0" for c in text) or "://" in text:
        raise UserError(f"{what} {text!r} is not a registry reference", fix=fix)
    host, slash, rest = text.partition("/")
    if not slash or not REGISTRY_HOST_RE.fullmatch(host) or ("." not in host and ":" not in
                                                             host and host != "localhost"):
        raise UserError(f"{what} {text!r}: {host!r} is not a registry HOST[:PORT]", fix=fix)
    digest = tag = ""
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        if not DIGEST_RE.fullmatch(digest):
            raise UserError(f"{what} {text!r}: {digest!r} is not a sha256:<64 hex> digest",
                            fix=fix)
    elif ":" in rest:
        rest, _, tag = rest.rpartition(":")
        if not TAG_RE.fullmatch(tag):
            raise UserError(f"{what} {text!r}: {tag!r} is not a valid tag", fix=fix)
    if not REPO_RE.fullmatch(rest):
        raise UserError(f"{what} {text!r}: {rest!r} is not a repository path", fix=fix)
    if not digest and not tag:
        tag = default_tag
    return Reference(host, rest, tag=tag, digest=digest)


def parse_cache_remote(url: str) -> Reference:
    """``oci://HOST[:PORT]/REPO`` (``settings.cache_remote``, checked when loaded) -> its
    repository."""
    return parse_reference(url.removeprefix("oci://"), what="cache remote")


def insecure(settings: Settings, host: str) -> bool:
    """Whether ``host`` may be reached over plain HTTP / without verifying its certificate."""
    bare = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return bare in LOCAL_HOSTS or host in settings.insecure_registries \
        or bare in settings.insecure_registries


def _classify(text: str) -> str:
    low = text.lower()
    for kind, words in _KINDS:
        if any(w in low for w in words):
            return kind
    return "other"


def _redact(text: str) -> str:
    """skopeo's message without anything that could carry a credential (userinfo of a URL,
    an Authorization header, a ``password``/``token`` field)."""
    text = re.sub(r"//[^/\s@]+@", "//", text)
    text = re.sub(r"(?i)(authorization:?\s*)(basic|bearer)\s+\S+", r"\1\2 <redacted>", text)
    return re.sub(r'(?i)("?(password|auth|token|identitytoken)"?\s*[:=]\s*)"?[^",\s}]+',
                  r"\1<redacted>", text)


def _last_message(stderr: str) -> str:
    """The message of skopeo's last log line (``time=... level=fatal msg="..."``)."""
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    m = re.search(r'msg="((?:[^"\\]|\\.)*)"', lines[-1])
    msg = m.group(1).replace('\\"', '"') if m else lines[-1]
    return _redact(msg)


class Client:
    """skopeo for one registry ``host`` (TLS verification decided once, by :func:`insecure`)."""

    def __init__(self, settings: Settings, host: str) -> None:
        self.settings = settings
        self.host = host
        self.verify = not insecure(settings, host)

    def _tls(self, flag: str) -> list[str]:
        return [f"{flag}={'true' if self.verify else 'false'}"]

    def _skopeo(self, args: list[str], *, what: str) -> subprocess.CompletedProcess:
        """``skopeo ARGS`` (never a shell; output as bytes); a :class:`RegistryError` (its
        ``kind`` says why) when it fails."""
        try:
            proc = procs.run([SKOPEO, *args], capture_output=True,
                             stdin=subprocess.DEVNULL, timeout=TIMEOUT_S)
        except FileNotFoundError:
            raise MissingToolError("skopeo not found: askbuild talks to registries through it",
                                   fix="inv setup   (or: apt-get install skopeo)") from None
        except subprocess.TimeoutExpired:
            raise RegistryError(f"{what}: the registry {self.host} did not answer within "
                                f"{TIMEOUT_S} s", kind="unreachable",
                                fix=f"check that {self.host} is up and reachable") from None
        if proc.returncode != 0:
            raise self.error(what, (proc.stderr or proc.stdout or b"").decode("utf-8", "replace"))
        return proc

    def error(self, what: str, stderr: str) -> RegistryError:
        """The :class:`RegistryError` for skopeo's ``stderr``."""
        msg = _last_message(stderr) or "skopeo failed without a message"
        kind = _classify(msg)
        fixes = {
            "unreachable": f"check that the registry {self.host} is running and reachable "
                           "from here (host, port, firewall)",
            "auth": f"log in to {self.host} (`skopeo login {self.host}` or `docker login "
                    f"{self.host}`; REGISTRY_AUTH_FILE or ~/.docker/config.json hold the "
                    "credentials) and check the account may push/pull this repository",
            "plain-http": f"{self.host} speaks plain HTTP: allow it with --insecure "
                          f"{self.host} or in askbuild.toml [registry] insecure = "
                          f"[\"{self.host}\"] (or give it a TLS certificate)",
            "tls": f"install the registry's CA certificate, or allow {self.host} with "
                   f"--insecure {self.host} / [registry] insecure",
            "tampered": f"the registry {self.host} serves bytes that do not match their "
                        "digest: delete the damaged blob/tag there",
        }
        heads = {"unreachable": f"cannot reach the registry {self.host}",
                 "auth": f"the registry {self.host} refused the credentials (or their absence)",
                 "plain-http": f"the registry {self.host} speaks plain HTTP, not HTTPS",
                 "tampered": f"the registry {self.host} served damaged or tampered data"}
        head = f"{heads[kind]}: " if kind in heads else ""
        return RegistryError(f"{what}: {head}{msg}", kind=kind, fix=fixes.get(
            kind, f"read skopeo's message above; `{SKOPEO} inspect` the reference to see more"))

    # -- operations -------------------------------------------------------------------
    def copy(self, src: str, dest: str, *, what: str, src_remote: bool = False,
             dest_remote: bool = False, retries: int = 0) -> None:
        """``skopeo copy --preserve-digests SRC DEST`` (no re-compression, no conversion)."""
        args = ["copy", "--quiet", "--preserve-digests", "--retry-times", str(retries)]
        if src_remote:
            args += self._tls("--src-tls-verify")
        if dest_remote:
            args += self._tls("--dest-tls-verify")
        self._skopeo([*args, "--", src, dest], what=what)

    def manifest(self, ref: Reference, *, what: str, retries: int = 0) -> bytes | None:
        """The raw manifest of ``ref`` as the registry serves it (None when it has none)."""
        try:
            proc = self._skopeo(["inspect", "--raw", "--retry-times", str(retries),
                             *self._tls("--tls-verify"), "--", ref.docker()], what=what)
        except RegistryError as e:
            if e.kind == "absent":
                return None
            raise
        return proc.stdout


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# -- inv image.push --------------------------------------------------------------------------

def _archive_for(settings: Settings, tag: str, archive: str | Path | None) -> Path:
    """The archive to push: ``archive`` when given, else the one ``inv image --tag TAG`` wrote
    (its record names it); an error naming the fix when there is none."""
    if archive:
        path = Path(archive)
        if not path.is_file():
            write = settings.command("image", "--output", str(path))
            raise UserError(f"--archive {path}: no such image archive",
                            fix=f"write it with `{write}`")
        return path
    rec = read_json(settings.image_record) or {}
    ref = rec.get("ref") if isinstance(rec.get("ref"), str) else ""
    path = Path(rec["archive"]) if isinstance(rec.get("archive"), str) else None
    words = () if tag == "dev" else ("--tag", tag)
    if path is None or not path.is_file() or ref.rpartition(":")[2] != tag:
        have = f" (the last one written is {ref})" if ref else ""
        raise UserError(f"no image archive for tag {tag!r} in {settings.image_dir}{have}",
                        fix=f"build it first: `{settings.command('image', *words)}`")
    return path


def local_manifest_digest(archive: Path) -> str:
    """The manifest digest the archive's OCI ``index.json`` names."""
    try:
        index = oci.read_archive_index(archive)["index.json"]
        return index["manifests"][0]["digest"]
    except (OSError, KeyError, IndexError, ValueError, AskbuildError) as e:
        raise UserError(f"{archive}: not an image archive askbuild wrote ({e})",
                        fix="write it again with `inv image`") from None


def push_image(settings: Settings, destination: str, *, tag: str,
               archive: str | Path | None) -> str:
    """Push the image archive of ``tag`` (or ``archive``) to ``destination``
    (``HOST[:PORT]/REPO[:TAG]``, the tag defaulting to ``tag``).  The manifest digest in the
    registry equals the local one (checked after the push); blobs the registry already holds
    are not uploaded again.  Returns ``HOST/REPO@DIGEST``."""
    ref = parse_reference(destination, default_tag=tag)
    path = _archive_for(settings, tag, archive)
    digest = local_manifest_digest(path)
    client = Client(settings, ref.host)
    console.step(f"push {path} -> {ref}")
    client.copy(f"oci-archive:{os.path.abspath(path)}", ref.docker(),
                what=f"push to {ref}", dest_remote=True, retries=2)
    raw = client.manifest(ref, what=f"read back {ref}", retries=2)
    remote = digest_of(raw) if raw is not None else "nothing"
    if remote != digest:
        raise RegistryError(f"pushed {ref}, but the registry's manifest digest is {remote}, "
                            f"not the local {digest}",
                            fix="the registry rewrote the manifest; push to an OCI distribution "
                                "registry that stores manifests as given")
    pinned = ref.with_digest(digest)
    console.info(f"pushed {ref} (digest {digest}); pull with: {pinned}")
    return str(pinned)


def pull_image(settings: Settings, ref: Reference, dest_dir: Path) -> str:
    """Copy ``ref`` (by digest, normally) into the OCI layout ``dest_dir`` (tests, tools).
    Returns the manifest digest."""
    client = Client(settings, ref.host)
    client.copy(ref.docker(), f"oci:{dest_dir}:pulled", what=f"pull {ref}", src_remote=True)
    index = json.loads((dest_dir / "index.json").read_text())
    return index["manifests"][0]["digest"]
