"""``inv manifests``: the Kubernetes objects that run the image ``inv image`` built.

Phases of :func:`write`:

1. check the options (``--max-connections``, ``--by-label``, the tag);
2. read what the image holds (:func:`image_facts`): ``image/image.json`` (the record
   ``inv image`` writes after the archive; ``imaging.read_record`` checks the archive against
   it) gives the reference, image id and labels (ASK commit and version, kernel release, patch
   series hash); the archive's application layer gives the DPA XML sets the image ships under
   ``/etc/monok8s/dpa-configs/<profile>/`` (``default`` and one per board of
   ``images/cmm/image.toml``).  A tag that is not the one of the last ``inv image`` is an
   :class:`UnknownImageError`;
3. read the user's sets (``--dpa-configs DIR``: ``DIR/<name>/`` with exactly the four files
   of :data:`DPA_FILES`, :func:`read_user_sets`);
4. build the objects as dicts (:func:`build_objects`): Namespace ``mono-system`` (optional),
   ConfigMap ``cmm-dpa-configs`` (every set: the image's own, because the volume hides the
   image's directory, plus the user's; keys ``<name>.<file>``, ``items`` mapping them to
   ``<name>/<file>``), and the DaemonSet ``cmm`` (selection by node name, the default) or one
   DaemonSet ``cmm-<profile>`` per profile selected by the node label ``--by-label``;
5. with ``--check``, validate every object against the Kubernetes OpenAPI schema of
   :data:`K8S_VERSION` (``kubernetes-validate``, strict: unknown fields are errors), offline;
6. dump them (:func:`render`: PyYAML, keys in build order, no timestamps: the same build gives
   the same bytes) with comment lines (how to reach the cmm CLI, the default login) to stdout or
   ``--output`` (written atomically, only when everything above passed).

Nothing publishes cmm's CLI port :data:`CLI_PORT`: no Service, no hostPort, no ports entry.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import re
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from . import console, imaging, runlock
from .errors import UserError
from .fsutil import write_bytes_atomic
from .settings import Settings

K8S_VERSION = "1.31"            # the Kubernetes version whose OpenAPI schemas --check uses
NAMESPACE = "mono-system"
NAME = "cmm"
CONFIGMAP = "cmm-dpa-configs"
INIT_NAME = "dpa-app"
CONFIG_ROOT = "/etc/monok8s/dpa-configs"
SELECT_SCRIPT = "/usr/share/monok8s/select-dpa-config.sh"
ENTRYPOINT = "/usr/share/monok8s/cmm-entrypoint.sh"
HOST_MODULES = "/host/lib/modules"
DPA_FILES = ("cdx_cfg.xml", "cdx_pcd.xml", "hxs_pdl_v3.xml", "cdx_sp.xml")
DEFAULT_MAX_CONNECTIONS = 131072
CONFIGMAP_LIMIT = 1024 * 1024   # bytes: the API server's limit on a ConfigMap's data
CLI_PORT = 2103
ANNOTATION_PREFIX = "askbuild.monok8s.io"
PROFILE_LABEL_EXAMPLE = "monok8s.io/hardware-profile"
CONTROL_PLANE_TAINTS = ("node-role.kubernetes.io/control-plane", "node-role.kubernetes.io/master")

_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
DNS_LABEL_RE = re.compile(rf"^{_LABEL}$")
DNS_SUBDOMAIN_RE = re.compile(rf"^{_LABEL}(\.{_LABEL})*$")
LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_NAME_RE = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
CONFIGMAP_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]+$")


class ManifestError(UserError):
    """``inv manifests`` cannot write the objects (bad option, input or image)."""


class UnknownImageError(ManifestError):
    """The tag was never built here (no record of it in ``image/image.json``)."""


class DpaConfigError(ManifestError):
    """A ``--dpa-configs`` directory is not laid out as ``DIR/<name>/<the four files>``."""


class InvalidNameError(ManifestError):
    """A name is not a valid Kubernetes name, label key or label value."""


class ConfigMapTooLarge(ManifestError):
    """The ConfigMap would pass the API server's 1 MiB limit."""


class SchemaError(ManifestError):
    """A generated object does not validate against the Kubernetes schema (``--check``)."""


@dataclass
class ImageFacts:
    """What the built image is: its reference, id, labels and the DPA sets it ships."""

    ref: str
    tag: str
    image_id: str
    labels: dict[str, str]
    profiles: dict[str, dict[str, bytes]] = field(default_factory=dict)
    partial: bool = False

    @property
    def ask_commit(self) -> str:
        return self.labels.get(f"{imaging.LABEL_PREFIX}.ask.commit", "unknown")


# -- options ----------------------------------------------------------------------------------

def check_max_connections(value) -> int:
    """``--max-connections``: a positive integer (also as a string of digits)."""
    if isinstance(value, bool):
        value = None
    elif isinstance(value, str) and re.fullmatch(r"\s*\d+\s*", value):
        value = int(value)
    if not isinstance(value, int) or not 0 < value < 2**31:
        raise ManifestError(f"--max-connections {value!r} is not a positive integer",
                            fix=f"give the number of connections cmm tracks, e.g. "
                                f"--max-connections {DEFAULT_MAX_CONNECTIONS} (the default)")
    return value


def check_label_key(key: str) -> str:
    """``--by-label``: a Kubernetes label key (``[prefix/]name``; prefix a DNS subdomain of at
    most 253 characters, name at most 63: alphanumerics, ``-``, ``_``, ``.``)."""
    prefix, slash, name = key.rpartition("/")
    why = None
    if not name or len(name) > 63 or not LABEL_NAME_RE.match(name):
        why = (f"its name part {name!r} must be 1-63 characters: letters, digits, '-', '_', '.', "
               "starting and ending with a letter or digit")
    elif slash and (not prefix or len(prefix) > 253 or not DNS_SUBDOMAIN_RE.match(prefix)):
        why = f"its prefix {prefix!r} must be a DNS subdomain (lowercase, e.g. monok8s.io)"
    if why:
        raise InvalidNameError(f"--by-label {key!r} is not a valid label key: {why}",
                               fix=f"e.g. --by-label {PROFILE_LABEL_EXAMPLE}")
    return key


def check_name(name: str, *, by_label: bool, where: str) -> None:
    """A set's name: a node name (DNS-1123 subdomain) when selecting by node name; a profile
    (a label value that also makes the DaemonSet name ``cmm-<name>``: a DNS-1123 label of at
    most 59 characters) when selecting by label."""
    if by_label:
        if len(name) > 59 or not DNS_LABEL_RE.match(name):
            raise InvalidNameError(
                f"{where}: profile name {name!r} is not a valid label value for a DaemonSet "
                f"{NAME}-<profile>: it must be a DNS-1123 label (lowercase letters, digits, "
                "'-', starting and ending with a letter or digit) of at most 59 characters",
                fix="rename the directory to the value of the node label, e.g. gateway-dk")
        return
    if len(name) > 253 - 1 - max(map(len, DPA_FILES)) or not DNS_SUBDOMAIN_RE.match(name):
        raise InvalidNameError(
            f"{where}: {name!r} is not a valid node name: it must be a DNS-1123 subdomain "
            "(lowercase letters, digits, '-', '.', starting and ending with a letter or digit)",
            fix="name the directory exactly as `kubectl get nodes` shows the node")


# -- the image --------------------------------------------------------------------------------

def image_facts(settings: Settings, tag: str) -> ImageFacts:
    """The image ``inv image --tag TAG`` built in this work directory, with its DPA sets read
    from the archive; an :class:`UnknownImageError` when the record names another tag or no
    archive (never built, or the archive changed since)."""
    imaging.check_tag(tag)
    conf = imaging.load_image_toml(settings)
    ref = f"{conf['repository']}:{tag}"
    build = settings.command("image", *imaging.tag_words(tag))
    rec = imaging.read_record(settings)
    if rec is None or rec.get("ref") != ref:
        seen = (f"the last `inv image` there built {rec.get('ref')}" if rec else
                f"{settings.image_record} is missing or does not match its archive")
        raise UnknownImageError(f"image tag {tag!r} was never built in {settings.work_dir} "
                                f"({seen})", fix=f"run `{build}` first")
    layer = next((la for la in rec.get("layers", []) if la.get("role") == "app"), None)
    if layer is None:
        raise UnknownImageError(f"{settings.image_record} names no application layer",
                                fix=f"run `{build}` again")
    profiles = archive_profiles(Path(rec["archive"]), layer["digest"], settings=settings, tag=tag)
    return ImageFacts(ref=ref, tag=tag, image_id=str(rec.get("image_id", "")),
                      labels=dict(rec.get("labels") or {}), profiles=profiles,
                      partial=bool(rec.get("partial")))


def archive_profiles(archive: Path, digest: str, *, settings: Settings | None = None,
                     tag: str = imaging.DEFAULT_TAG) -> dict[str, dict[str, bytes]]:
    """``{profile: {file: bytes}}`` of ``etc/monok8s/dpa-configs/`` in the layer ``digest`` of
    the image archive ``archive`` (gzip or plain tar)."""
    prefix = imaging.DPA_CONFIG_ROOT + "/"
    member = f"blobs/sha256/{digest.split(':', 1)[-1]}"
    out: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(archive, "r:") as outer:
            blob = outer.extractfile(member)
            if blob is None:
                raise KeyError(member)
            data = blob.read()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as layer:
            for m in layer:
                name = m.name.lstrip("./")
                if not m.isfile() or not name.startswith(prefix):
                    continue
                parts = name[len(prefix):].split("/")
                if len(parts) == 2 and parts[1] in DPA_FILES:
                    f = layer.extractfile(m)
                    out.setdefault(parts[0], {})[parts[1]] = f.read() if f else b""
    except (OSError, KeyError, tarfile.TarError, EOFError) as e:
        again = settings.command("image", *imaging.tag_words(tag)) if settings else "inv image"
        raise UnknownImageError(f"cannot read the DPA sets of the image archive {archive}: {e}",
                                fix=f"run `{again}` again") from e
    return {k: dict(sorted(v.items())) for k, v in sorted(out.items())}


# -- the user's sets --------------------------------------------------------------------------

def read_user_sets(root: str | Path, *, by_label: bool) -> dict[str, dict[str, bytes]]:
    """``DIR/<name>/{cdx_cfg.xml,cdx_pcd.xml,hxs_pdl_v3.xml,cdx_sp.xml}``: each directory
    must hold exactly those four files; names checked with :func:`check_name`."""
    root = Path(root)
    fix = ("lay it out as DIR/<name>/" + "{" + ",".join(DPA_FILES) + "}, one directory per "
           + ("hardware profile" if by_label else "node"))
    if not root.is_dir():
        raise DpaConfigError(f"--dpa-configs {root}: not a directory", fix=fix)
    sets: dict[str, dict[str, bytes]] = {}
    for d in sorted(root.iterdir()):
        if d.name.startswith("."):
            continue
        if not d.is_dir():
            raise DpaConfigError(f"--dpa-configs {root}: {d.name} is not a directory", fix=fix)
        check_name(d.name, by_label=by_label, where=f"--dpa-configs {d}")
        files: dict[str, bytes] = {}
        for fname in DPA_FILES:
            p = d / fname
            if not p.is_file():
                raise DpaConfigError(f"--dpa-configs: {d} has no {fname} (each set needs all "
                                     f"four files: {', '.join(DPA_FILES)})",
                                     fix=f"add {p}, e.g. a copy of the board's file")
            try:
                files[fname] = p.read_bytes()
            except OSError as e:
                raise DpaConfigError(f"--dpa-configs: cannot read {p}: {e.strerror}",
                                     fix="make it readable") from e
        extra = sorted(x.name for x in d.iterdir()
                       if x.name not in DPA_FILES and not x.name.startswith("."))
        if extra:
            raise DpaConfigError(f"--dpa-configs: {d} holds {', '.join(extra)}, which no "
                                 "container reads", fix=fix)
        sets[d.name] = files
    if not sets:
        raise DpaConfigError(f"--dpa-configs {root}: holds no set", fix=fix)
    return sets


# -- the objects ------------------------------------------------------------------------------

def configmap_key(profile: str, fname: str) -> str:
    """The ConfigMap key of ``<profile>/<fname>`` (keys cannot hold ``/``)."""
    return f"{profile}.{fname}"


def labels_for(facts: ImageFacts, instance: str) -> dict[str, str]:
    version = facts.tag
    if len(version) > 63 or not LABEL_VALUE_RE.match(version):
        raise InvalidNameError(f"image tag {version!r} is not a valid label value for "
                               "app.kubernetes.io/version (at most 63 characters, starting and "
                               "ending with a letter or digit)",
                               fix="build the image with a shorter tag: inv image --tag T")
    return {"app.kubernetes.io/name": NAME, "app.kubernetes.io/instance": instance,
            "app.kubernetes.io/version": version, "app.kubernetes.io/component": "fast-path",
            "app.kubernetes.io/part-of": "monok8s", "app.kubernetes.io/managed-by": "askbuild"}


def annotations_for(facts: ImageFacts, sets_sha256: str) -> dict[str, str]:
    """The build an operator can compare a node against (also on the pod template, so a new
    image under the same tag, or new DPA sets, rolls the pods)."""
    lab = facts.labels
    p = imaging.LABEL_PREFIX
    out = {f"{ANNOTATION_PREFIX}/image": facts.ref,
           f"{ANNOTATION_PREFIX}/image-id": facts.image_id,
           f"{ANNOTATION_PREFIX}/ask-commit": facts.ask_commit,
           f"{ANNOTATION_PREFIX}/ask-version": lab.get("org.opencontainers.image.version",
                                                       "unknown"),
           f"{ANNOTATION_PREFIX}/kernel-release": lab.get(f"{p}.kernel.release", "unknown"),
           f"{ANNOTATION_PREFIX}/patches-sha256": lab.get(f"{p}.patches.sha256", "unknown"),
           f"{ANNOTATION_PREFIX}/dpa-configs-sha256": sets_sha256}
    if facts.partial:
        out[f"{ANNOTATION_PREFIX}/partial"] = "true"
    return out


def sets_digest(sets: dict[str, dict[str, bytes]]) -> str:
    h = hashlib.sha256()
    for name, files in sorted(sets.items()):
        for fname, data in sorted(files.items()):
            h.update(f"{name}/{fname}\0{hashlib.sha256(data).hexdigest()}\n".encode())
    return h.hexdigest()


def configmap(sets: dict[str, dict[str, bytes]], labels: dict[str, str]) -> dict:
    """The ConfigMap holding every set (UTF-8 files as ``data``, others as ``binaryData``);
    a :class:`ConfigMapTooLarge` over :data:`CONFIGMAP_LIMIT`."""
    data: dict[str, str] = {}
    binary: dict[str, str] = {}
    for name, files in sorted(sets.items()):
        for fname, content in sorted(files.items()):
            key = configmap_key(name, fname)
            try:
                data[key] = content.decode("utf-8")
            except UnicodeDecodeError:
                binary[key] = base64.b64encode(content).decode()
    size = sum(len(k) + len(v.encode()) for k, v in data.items()) + \
        sum(len(k) + len(v) for k, v in binary.items())
    if size > CONFIGMAP_LIMIT:
        biggest = sorted(((sum(len(c) for c in f.values()), n) for n, f in sets.items()),
                         reverse=True)[:3]
        raise ConfigMapTooLarge(
            f"ConfigMap {CONFIGMAP} would hold {size} bytes, over the 1 MiB limit "
            f"({CONFIGMAP_LIMIT} bytes); largest sets: "
            + ", ".join(f"{n} ({s} bytes)" for s, n in biggest),
            fix="ship fewer or smaller sets (select by hardware profile with --by-label "
                "instead of one set per node)")
    obj = {"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": CONFIGMAP, "namespace": NAMESPACE,
                        "labels": {k: v for k, v in labels.items()
                                   if k != "app.kubernetes.io/instance"}}}
    if data:
        obj["data"] = data
    if binary:
        obj["binaryData"] = binary
    return obj


def items_for(sets: dict[str, dict[str, bytes]], names: list[str]) -> list[dict]:
    """``items`` of the ConfigMap volume: key -> ``<name>/<file>`` (as the pod sees it under
    :data:`CONFIG_ROOT`)."""
    return [{"key": configmap_key(n, f), "path": f"{n}/{f}"}
            for n in sorted(names) for f in sorted(sets[n])]


def daemonset(facts: ImageFacts, *, name: str, labels: dict[str, str], annotations: dict,
              items: list[dict], max_connections: int, profile: str | None = None,
              label_key: str | None = None) -> dict:
    """DaemonSet ``name``: init container :data:`INIT_NAME` (the node-config wrapper), main
    container ``cmm`` (the image's entrypoint); selected by node name (``profile`` None) or by
    ``label_key=profile``."""
    selector = {"app.kubernetes.io/name": NAME, "app.kubernetes.io/instance": name}
    env = [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}]
    if profile is not None:
        env.append({"name": "MONOK8S_HW_PROFILE", "value": profile})
    env.append({"name": "MODPROBE_ROOT", "value": "/host"})
    node_selector = {"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"}
    if profile is not None and label_key:
        node_selector[label_key] = profile
    init = {
        "name": INIT_NAME, "image": facts.ref, "imagePullPolicy": "Never",
        "command": [SELECT_SCRIPT], "env": env,
        # module loading (insmod/modprobe: CAP_SYS_MODULE) and dpa_app's FMan character devices
        # (/dev/fm*: only a privileged container may open host devices): docs/image.md
        "securityContext": {"privileged": True},
        "volumeMounts": [
            {"name": "dpa-configs", "mountPath": CONFIG_ROOT, "readOnly": True},
            {"name": "host-modules", "mountPath": HOST_MODULES, "readOnly": True}],
    }
    main = {
        "name": NAME, "image": facts.ref, "imagePullPolicy": "Never",
        "command": [ENTRYPOINT],
        "env": [{"name": "CMM_MAX_CONNECTIONS", "value": str(max_connections)}],
        # netlink (conntrack, FCI) and the node's interfaces: NET_ADMIN; raw sockets: NET_RAW
        "securityContext": {"privileged": False, "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN", "NET_RAW"]}},
    }
    pod = {
        "hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet",
        "priorityClassName": "system-node-critical",
        "nodeSelector": node_selector,
        "tolerations": [{"key": k, "operator": "Exists", "effect": "NoSchedule"}
                        for k in CONTROL_PLANE_TAINTS],
        "terminationGracePeriodSeconds": 30,
        "initContainers": [init], "containers": [main],
        "volumes": [
            {"name": "dpa-configs", "configMap": {"name": CONFIGMAP, "defaultMode": 0o644,
                                                  "items": items}},
            {"name": "host-modules", "hostPath": {"path": "/lib/modules",
                                                  "type": "Directory"}}],
    }
    return {
        "apiVersion": "apps/v1", "kind": "DaemonSet",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels,
                     "annotations": annotations},
        "spec": {
            "selector": {"matchLabels": selector},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {"metadata": {"labels": labels, "annotations": annotations},
                         "spec": pod},
        },
    }


def namespace_object(labels: dict[str, str]) -> dict:
    return {"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": NAMESPACE,
                         "labels": {k: labels[k] for k in ("app.kubernetes.io/part-of",
                                                           "app.kubernetes.io/managed-by")}}}


def build_objects(facts: ImageFacts, user_sets: dict[str, dict[str, bytes]], *,
                  namespace: bool = True, max_connections: int = DEFAULT_MAX_CONNECTIONS,
                  by_label: str | None = None) -> list[dict]:
    """The objects, in apply order: Namespace (when ``namespace``), ConfigMap, DaemonSet(s)."""
    max_connections = check_max_connections(max_connections)
    if by_label is not None:
        check_label_key(by_label)
    sets = {**facts.profiles, **user_sets}
    for name in sorted(sets):
        if name not in user_sets:
            check_name(name, by_label=by_label is not None, where=f"image {facts.ref}")
    base_labels = labels_for(facts, NAME)
    annotations = annotations_for(facts, sets_digest(sets))
    objs = [namespace_object(base_labels)] if namespace else []
    objs.append(configmap(sets, base_labels))
    if by_label is None:
        objs.append(daemonset(facts, name=NAME, labels=base_labels, annotations=annotations,
                              items=items_for(sets, list(sets)),
                              max_connections=max_connections))
        return objs
    for prof in sorted(sets):
        ds = f"{NAME}-{prof}"
        objs.append(daemonset(facts, name=ds, labels=labels_for(facts, ds),
                              annotations=annotations, items=items_for(sets, [prof]),
                              max_connections=max_connections, profile=prof,
                              label_key=by_label))
    return objs


# -- check and output -------------------------------------------------------------------------

def object_name(obj: dict) -> str:
    return f"{obj.get('kind')}/{(obj.get('metadata') or {}).get('name')}"


def validate(objs: list[dict], version: str = K8S_VERSION) -> None:
    """Every object against the strict OpenAPI schema of Kubernetes ``version`` (offline); a
    :class:`SchemaError` naming the object, the field and the schema's message."""
    import kubernetes_validate
    from kubernetes_validate import utils as kv
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kv.ValidationError as e:
            where = ".".join(str(p) for p in e.path) or "(top)"
            raise SchemaError(f"{object_name(obj)} does not validate against Kubernetes "
                              f"{e.version}: {where}: {e.message}",
                              fix="a bug in askbuild/manifests.py (or a bad option value); "
                                  "report it with this message") from e
        except (kv.SchemaNotFoundError, kv.VersionNotSupportedError,
                kv.InvalidSchemaError) as e:
            raise SchemaError(f"{object_name(obj)}: no usable schema for Kubernetes {version}: "
                              f"{e.message}",
                              fix="reinstall kubernetes-validate (inv setup)") from e


def header(facts: ImageFacts, *, by_label: str | None) -> list[str]:
    mode = (f"one DaemonSet per hardware profile, selected by the node label {by_label}"
            if by_label else "DPA set chosen by node name (spec.nodeName)")
    return [
        f"Generated by askbuild `inv manifests` for {facts.ref}",
        f"  image id {facts.image_id}, ASK commit {facts.ask_commit}",
        f"  selection: {mode}",
        "Install: inv manifests [--tag T] | kubectl apply -f -",
        f"The cmm CLI (TCP {CLI_PORT}) is not published: no Service, no hostPort. Reach it with",
        f"  kubectl -n {NAMESPACE} port-forward pod/<pod> 12345:{CLI_PORT}",
        "  telnet 127.0.0.1 12345",
        "WARNING: the default cmm login is admin/admin: change it before any exposure. With",
        f"  hostNetwork the port listens on the node itself: block {CLI_PORT} on the node's "
        "firewall.",
    ]


class _Dumper(yaml.SafeDumper):
    """Safe dumping without anchors/aliases (a reader sees every value where it applies) and
    with multi-line strings as literal blocks (the XML files stay readable)."""

    def ignore_aliases(self, data) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str):
    lines = value.split("\n")
    block = len(lines) > 1 and all(ln == ln.rstrip(" \t") and ln.isprintable() for ln in lines)
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if block else None)


_Dumper.add_representer(str, _str)


def render(objs: list[dict], comments: list[str]) -> bytes:
    """Multi-document YAML: the comment lines first, one document per object (keys in build
    order, no line wrapping), the same bytes for the same objects."""
    docs = [yaml.dump(o, Dumper=_Dumper, sort_keys=False, default_flow_style=False,
                      width=10_000, allow_unicode=True) for o in objs]
    text = "".join(f"# {c}".rstrip() + "\n" for c in comments)
    text += "".join(f"---\n# {object_name(o)}\n{d}" for o, d in zip(objs, docs, strict=True))
    return text.encode("utf-8")


def generate(settings: Settings, *, tag: str, namespace: bool = True,
             max_connections: int = DEFAULT_MAX_CONNECTIONS, dpa_configs: str | Path | None = None,
             by_label: str | None = None) -> tuple[ImageFacts, list[dict]]:
    """Phases 1-4 of :func:`write`: the image's facts and the objects."""
    max_connections = check_max_connections(max_connections)
    if by_label is not None:
        check_label_key(by_label)
    facts = image_facts(settings, tag)
    user = read_user_sets(dpa_configs, by_label=by_label is not None) if dpa_configs else {}
    for name in sorted(set(user) & set(facts.profiles)):
        console.info(f"--dpa-configs: {name} replaces the image's own set of that name")
    if facts.partial:
        console.warn(f"{facts.ref} is a PARTIAL image (inv image --partial): not a release "
                     "candidate")
    if by_label is None and not user:
        console.warn("selecting by node name without --dpa-configs: only nodes named "
                     + ", ".join(sorted(facts.profiles)) + " find a DPA set; give one "
                     "directory per node (--dpa-configs DIR) or select by hardware profile "
                     f"(--by-label {PROFILE_LABEL_EXAMPLE})")
    objs = build_objects(facts, user, namespace=namespace, max_connections=max_connections,
                         by_label=by_label)
    return facts, objs


@runlock.exclusive("manifests")
def write(settings: Settings, *, tag: str = imaging.DEFAULT_TAG, output: str | Path | None = None,
          namespace: bool = True, max_connections: int = DEFAULT_MAX_CONNECTIONS,
          dpa_configs: str | Path | None = None, by_label: str | None = None,
          check: bool = False) -> bytes:
    """``inv manifests``: the YAML on stdout or in ``output`` (see the module docstring).
    Nothing is written unless every phase passed.  Returns the bytes."""
    facts, objs = generate(settings, tag=tag, namespace=namespace,
                           max_connections=max_connections, dpa_configs=dpa_configs,
                           by_label=by_label)
    if check:
        validate(objs)
        console.info(f"{len(objs)} objects valid against the Kubernetes {K8S_VERSION} schema")
    text = render(objs, header(facts, by_label=by_label))
    if output:
        write_bytes_atomic(Path(output), text)
        console.info(f"wrote {output}: " + ", ".join(object_name(o) for o in objs))
    else:
        out = getattr(sys.stdout, "buffer", None)
        if out is None:
            sys.stdout.write(text.decode("utf-8"))
        else:
            sys.stdout.flush()
            out.write(text)
        sys.stdout.flush()
    return text
