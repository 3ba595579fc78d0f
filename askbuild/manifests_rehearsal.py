"""``inv manifests.rehearse``: run the pod spec ``inv manifests`` generates under the Docker
engine (qemu for the arm64 image), as the kubelet would run it on a node.

Scenarios (:func:`rehearse`), each from the objects :func:`manifests.generate` returns:

* **node-name mode** (DaemonSet ``cmm``): ``NODE_NAME`` is a node of the configuration (the
  first ``--dpa-configs`` set, or without that option a set ``rehearsal-node`` made here from
  the image's ``default`` set); the init container must select
  ``/etc/monok8s/dpa-configs/<node>/`` and exit 0, then the main container must keep cmm in the
  foreground with its output in ``docker logs`` and end with status 0 on SIGTERM;
* **by-label mode** (DaemonSet ``cmm-<profile>``, a board profile of the image): the same, the
  profile given to the wrapper (``MONOK8S_HW_PROFILE``) winning over a node name that has no set;
* **a node with no config**: the init container must exit non-zero, its log naming
  ``NODE_NAME`` and the missing directory (the main container is never started, as on a node).

How the pod is reproduced (:func:`run_container`): the ConfigMap volume is materialized as the
kubelet does (a ``..<timestamp>`` directory holding the ``items`` paths with ``defaultMode``,
``..data`` pointing at it, and one top-level symlink per first path element), bind-mounted
read-only at the ``mountPath``; hostPath volumes are bind-mounted (an empty directory stands in
for one the build host lacks: its ``/lib/modules`` is not the node's anyway); command, env
(``fieldRef: spec.nodeName`` = the rehearsed node), privileged / capabilities /
``allowPrivilegeEscalation`` and the image are the container's.  Deviations, on purpose: the
init container gets ``DPA_DRY_RUN=1`` (init_dpa.sh prints the module and dpa_app commands
instead of running them: there is no FMan here, and a module must never be loaded into the build
host's kernel; an image whose init_dpa.sh lacks the dry run is refused before anything runs), and
containers run without network instead of ``hostNetwork`` (the build host's network is not the
node's).

Every container carries the label ``io.monok8s.askbuild.rehearsal=<pid>-<random>`` and is
removed, and every temporary directory deleted, however the rehearsal ends (failure, Ctrl-C,
SIGTERM).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from . import console, dockerhost, imagetest, imaging, manifests, runlock
from .errors import ImageError, UserError
from .settings import Settings

REHEARSAL_LABEL = "io.monok8s.askbuild.rehearsal"
REHEARSAL_NODE = "rehearsal-node"       # the node of the config made without --dpa-configs
NO_CONFIG_NODE = "node-without-dpa-config"
OTHER_NODE = "rehearsal-node-by-label"  # the node name in by-label mode (it has no set)
INIT_TIMEOUT = 180                      # seconds for the init container (qemu start included)
START_SECONDS = imagetest.START_SECONDS
SETTLE_SECONDS = 3
STOP_SECONDS = imagetest.STOP_SECONDS
PENDING_SECONDS = 60                    # for a container whose create was interrupted
KUBELET_TS = "..2025_01_01_00_00_00.000000001"   # the kubelet's timestamped directory name


class RehearsalError(ImageError):
    """The rehearsal cannot run (no engine, image not loaded, an image without the dry run)."""


class StartError(RehearsalError):
    """The engine refused to start a container of the pod (e.g. its command does not exist in
    the image): a failed check of that scenario, not the end of the rehearsal."""


#: One check and the report of them: the same shape as ``inv image.test``'s.
Check = imagetest.Check
RehearsalReport = imagetest.TestReport


@dataclass
class Run:
    """What a container did: status (None: still running), stdout, stderr; ``error``: why it
    could not start."""

    status: int | None
    stdout: str
    stderr: str
    error: str = ""

    @property
    def logs(self) -> str:
        return self.stdout + self.stderr


class _Scratch:
    """Containers and directories made by one rehearsal, removed by :meth:`close`."""

    def __init__(self, client) -> None:
        self.client = client
        self.token = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"   # REHEARSAL_LABEL's value
        self.containers: list = []
        self.pending: str | None = None   # name of a container being created
        self.count = 0
        self.dirs: list[Path] = []
        self.said: set[str] = set()

    def once(self, message: str, *, warn: bool = False) -> None:
        """Say ``message`` the first time only."""
        if message not in self.said:
            self.said.add(message)
            (console.warn if warn else console.info)(message)

    def next_name(self) -> str:
        self.count += 1
        return f"askbuild-rehearse-{self.token}-{self.count}"

    def _wait_for(self, name: str, timeout: float = PENDING_SECONDS) -> list:
        """The container ``name`` an interrupted create asked for: the engine goes on creating
        it (copying the image's file system can take seconds), so wait for it to appear."""
        import docker.errors
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                return [self.client.containers.get(name)]
            except docker.errors.NotFound:
                time.sleep(0.5)
            except Exception:  # noqa: BLE001 - the engine is gone: nothing to remove
                return []
        return []

    def tempdir(self, what: str) -> Path:
        d = Path(tempfile.mkdtemp(prefix=f"askbuild-rehearse-{what}-"))
        self.dirs.append(d)
        return d

    def close(self) -> None:
        """Remove every container of this rehearsal (those it holds, and any the engine made
        for a request interrupted before it answered: found by label) and directory."""
        try:
            labelled = self.client.containers.list(
                all=True, filters={"label": f"{REHEARSAL_LABEL}={self.token}"})
        except Exception as e:  # noqa: BLE001 - the engine's words
            console.warn(f"could not list the rehearsal's containers: {e}")
            labelled = []
        known = {c.id for c in self.containers}
        self.containers += [c for c in labelled if c.id not in known]
        if self.pending is not None:
            self.containers += self._wait_for(self.pending)
        for c in reversed(self.containers):
            try:
                c.remove(force=True)
            except Exception as e:  # noqa: BLE001 - already gone is fine; say anything else
                if "No such container" not in str(e) and "404" not in str(e):
                    console.warn(f"could not remove container {c.id[:12]}: {e}")
        self.containers.clear()
        for d in reversed(self.dirs):
            shutil.rmtree(d, ignore_errors=True)
        self.dirs.clear()


# -- the pod, as the kubelet would run it ------------------------------------------------------

def materialize_configmap(cm: dict, volume: dict, dest: Path) -> None:
    """Write ConfigMap ``cm`` as the kubelet projects volume ``volume`` (a ``configMap``
    volume) into ``dest``: ``..<ts>/<path>`` files with ``mode`` / ``defaultMode`` (0644 when
    neither), ``..data -> ..<ts>``, one top-level symlink per first path element."""
    import base64
    src = volume["configMap"]
    data = {k: v.encode() for k, v in (cm.get("data") or {}).items()}
    data.update({k: base64.b64decode(v) for k, v in (cm.get("binaryData") or {}).items()})
    default_mode = src.get("defaultMode", 0o644)
    items = src.get("items") or [{"key": k, "path": k} for k in sorted(data)]
    ts = dest / KUBELET_TS
    ts.mkdir(parents=True)
    tops = set()
    for item in items:
        if item["key"] not in data:
            raise RehearsalError(f"volume {volume['name']}: ConfigMap {cm['metadata']['name']} "
                                 f"has no key {item['key']} (the kubelet would not start the "
                                 "pod)")
        p = ts / item["path"]
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data[item["key"]])
        os.chmod(p, item.get("mode", default_mode))
        tops.add(item["path"].split("/", 1)[0])
    for d in sorted(ts.rglob("*")):
        if d.is_dir():
            os.chmod(d, 0o755)
    os.chmod(ts, 0o755)
    (dest / "..data").symlink_to(KUBELET_TS)
    for top in sorted(tops):
        (dest / top).symlink_to(f"..data/{top}")


def volume_binds(objs: list[dict], pod: dict, scratch: _Scratch) -> dict[str, Path]:
    """``{volume name: host directory}`` for the pod's volumes (configMap, hostPath)."""
    cms = {o["metadata"]["name"]: o for o in objs if o["kind"] == "ConfigMap"}
    out: dict[str, Path] = {}
    for vol in pod.get("volumes", []):
        if "configMap" in vol:
            cm = cms.get(vol["configMap"]["name"])
            if cm is None:
                raise RehearsalError(f"volume {vol['name']}: no ConfigMap "
                                     f"{vol['configMap']['name']} among the objects")
            d = scratch.tempdir(f"cm-{vol['name']}")
            os.chmod(d, 0o755)
            materialize_configmap(cm, vol, d)
            out[vol["name"]] = d
        elif "hostPath" in vol:
            path = Path(vol["hostPath"]["path"])
            if path.is_dir():
                out[vol["name"]] = path
            else:
                scratch.once(f"volume {vol['name']}: hostPath {path} does not exist on this "
                             "host; an empty directory stands in for it")
                out[vol["name"]] = scratch.tempdir(f"host-{vol['name']}")
        else:
            raise RehearsalError(f"volume {vol['name']}: only configMap and hostPath volumes "
                                 "can be rehearsed")
    return out


def container_kwargs(spec: dict, binds: dict[str, Path], *, node: str, token: str,
                     extra_env: dict[str, str] | None = None) -> dict:
    """Docker SDK ``containers.run`` arguments for the container ``spec`` of the pod."""
    env: dict[str, str] = {}
    for e in spec.get("env", []):
        if "value" in e:
            env[e["name"]] = str(e["value"])
        elif (e.get("valueFrom") or {}).get("fieldRef", {}).get("fieldPath") == "spec.nodeName":
            env[e["name"]] = node
        else:
            raise RehearsalError(f"container {spec['name']}: env {e['name']} cannot be "
                                 "rehearsed (only values and fieldRef spec.nodeName)")
    env.update(extra_env or {})
    mounts = []
    from docker.types import Mount
    for m in spec.get("volumeMounts", []):
        mounts.append(Mount(target=m["mountPath"], source=str(binds[m["name"]]), type="bind",
                            read_only=bool(m.get("readOnly"))))
    sc = spec.get("securityContext") or {}
    caps = sc.get("capabilities") or {}
    kw = {"image": spec["image"], "environment": env, "mounts": mounts,
          "network_mode": "none", "platform": "linux/arm64", "detach": True,
          "privileged": bool(sc.get("privileged")),
          "cap_add": list(caps.get("add") or []) or None,
          "cap_drop": list(caps.get("drop") or []) or None,
          "security_opt": ["no-new-privileges"] if sc.get("allowPrivilegeEscalation") is False
          else None,
          "labels": {REHEARSAL_LABEL: token}}
    if spec.get("command"):
        kw["entrypoint"] = list(spec["command"])
    kw["command"] = list(spec.get("args") or [])
    return kw


def run_container(scratch: _Scratch, kwargs: dict):
    """Start a container (remembered for cleanup) and return it.  An engine that cannot grant
    ``privileged`` (itself in a container without every capability: "unable to apply caps")
    runs it with CAP_SYS_MODULE instead, saying so (in the dry run nothing needs more); any
    other refusal is a :class:`RehearsalError` with the engine's words."""
    import docker.errors
    args = {k: v for k, v in kwargs.items() if k != "detach"}
    args["name"] = scratch.pending = scratch.next_name()
    try:
        c = scratch.client.containers.create(**args)
    except docker.errors.APIError as e:
        scratch.pending = None
        raise RehearsalError(f"the engine at {dockerhost.engine_host()} could not create a "
                             f"container of {args['image']}: {e.explanation or e}",
                             fix="check the engine's log") from e
    scratch.containers.append(c)
    scratch.pending = None
    try:
        c.start()
        return c
    except docker.errors.APIError as e:
        if not (args.get("privileged") and "caps" in str(e)):
            raise StartError(f"the engine could not start it: {e.explanation or e}") from e
        scratch.once(f"the engine cannot run privileged containers ({e.explanation or e}): "
                     "privileged containers run with CAP_SYS_MODULE instead (the dry run loads "
                     "nothing)", warn=True)
    args.update(privileged=False, cap_add=["SYS_MODULE"])
    return run_container(scratch, args)


def _logs(container, *, stdout: bool = True, stderr: bool = True) -> str:
    return container.logs(stdout=stdout, stderr=stderr).decode("utf-8", "replace")


def run_to_end(scratch: _Scratch, kwargs: dict, timeout: float = INIT_TIMEOUT) -> Run:
    """Run a container to its end (killed after ``timeout``: status None)."""
    try:
        c = run_container(scratch, kwargs)
    except StartError as e:
        return Run(None, "", "", error=e.message)
    try:
        status = c.wait(timeout=timeout).get("StatusCode")
    except Exception:  # noqa: BLE001 - a timeout from the SDK: still running
        c.kill()
        status = None
    return Run(status, _logs(c, stderr=False), _logs(c, stdout=False))


def _tail(text: str, n: int = 8) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:]) or "(no output)"


# -- the checks ---------------------------------------------------------------------------------

def check_init_selected(run: Run, *, mode: str, profile: str, source: str,
                        files: dict[str, bytes], materialized: Path) -> Check:
    """The init container exited 0 after choosing ``CONFIG_ROOT/<profile>/`` (from ``source``,
    NODE_NAME or MONOK8S_HW_PROFILE), bound all four files of it, and printed (dry run) the
    dpa_app command; the materialized files are the set's bytes."""
    name = f"{mode}: init container {manifests.INIT_NAME} picks {profile}'s DPA set and exits 0"
    d = f"{manifests.CONFIG_ROOT}/{profile}"
    want = [f"select-dpa-config: profile {profile} (from {source}): {d}"]
    want += [f"init_dpa: {var}={d}/{f}" for var, f in (
        ("CDX_CFG_FILE", "cdx_cfg.xml"), ("CDX_PCD_FILE", "cdx_pcd.xml"),
        ("CDX_PDL_FILE", "hxs_pdl_v3.xml"), ("CDX_SP_FILE", "cdx_sp.xml"))]
    want += ["init_dpa: would run: /usr/bin/dpa_app", "init_dpa: dry run complete"]
    if run.error:
        return Check(name, False, run.error)
    if run.status != 0:
        return Check(name, False, f"exited with status {run.status}: {_tail(run.logs)}")
    missing = [w for w in want if w not in run.logs]
    if missing:
        return Check(name, False, f"its log lacks {missing[0]!r}: {_tail(run.logs)}")
    for fname, data in files.items():
        p = materialized / profile / fname
        if not p.is_file() or p.read_bytes() != data:
            return Check(name, False, f"{p} (the ConfigMap as the pod sees it) is not "
                                      f"{profile}/{fname} of the configuration")
        if p.stat().st_mode & 0o777 != 0o644:
            return Check(name, False, f"{p} has mode {p.stat().st_mode & 0o777:o}, not 644")
    return Check(name, True)


def check_no_config(run: Run, node: str) -> Check:
    """A node without a set: the init container fails, its log naming NODE_NAME and the path."""
    name = (f"node without a DPA set: init container exits non-zero saying NODE_NAME={node} "
            "has no configuration")
    want = f"no DPA configuration for NODE_NAME={node}: {manifests.CONFIG_ROOT}/{node} " \
           "does not exist"
    if run.error:
        return Check(name, False, run.error)
    if run.status in (0, None):
        return Check(name, False, f"status {run.status}: {_tail(run.logs)}")
    if want not in run.stderr:
        return Check(name, False, f"its log lacks {want!r}: {_tail(run.logs)}")
    return Check(name, True)


def main_container_checks(scratch: _Scratch, kwargs: dict, mode: str) -> list[Check]:
    """The main container: cmm still serving :data:`SETTLE_SECONDS` after its first line on
    stdout (or after the entrypoint's syslog relay printed it), logs in ``docker logs``,
    ``docker stop`` (SIGTERM) ends it with 0 within :data:`STOP_SECONDS`."""
    names = (f"{mode}: main container keeps cmm serving until it is stopped",
             f"{mode}: cmm's output is in docker logs",
             f"{mode}: SIGTERM ends the main container with status 0")
    try:
        c = run_container(scratch, kwargs)
    except StartError as e:
        return [Check(names[0], False, e.message), Check(names[1], False, e.message),
                Check(names[2], False, "not tried: cmm was not serving")]
    deadline = time.monotonic() + START_SECONDS
    while True:
        out = _logs(c, stderr=False)
        c.reload()
        if out.strip() or c.status == "exited" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    time.sleep(SETTLE_SECONDS)
    c.reload()
    logs = _logs(c)
    if c.status != "running":
        status = (c.attrs.get("State") or {}).get("ExitCode")
        fail = f"ended with status {status} before it was asked to stop: {_tail(logs)}"
        return [Check(names[0], False, fail), Check(names[1], bool(out.strip()), fail),
                Check(names[2], False, "not tried: cmm was not serving")]
    checks = [Check(names[0], True),
              Check(names[1], bool(out.strip()),
                    f"nothing on stdout within {START_SECONDS} s: {_tail(logs)}")]
    t0 = time.monotonic()
    c.stop(timeout=STOP_SECONDS)
    took = time.monotonic() - t0
    c.reload()
    status = (c.attrs.get("State") or {}).get("ExitCode")
    logs = _logs(c)
    if took >= STOP_SECONDS:
        checks.append(Check(names[2], False, f"still running {STOP_SECONDS} s after SIGTERM "
                                             f"(killed): {_tail(logs)}"))
    elif status != 0:
        checks.append(Check(names[2], False, f"status {status}: {_tail(logs)}"))
    else:
        checks.append(Check(names[2], True))
    return checks


# -- the scenarios ------------------------------------------------------------------------------

def _pod(objs: list[dict], ds_name: str) -> dict:
    for o in objs:
        if o["kind"] == "DaemonSet" and o["metadata"]["name"] == ds_name:
            return o["spec"]["template"]["spec"]
    raise RehearsalError(f"no DaemonSet {ds_name} among the generated objects")


def _containers(pod: dict) -> tuple[dict, dict]:
    init = next(c for c in pod["initContainers"] if c["name"] == manifests.INIT_NAME)
    main = next(c for c in pod["containers"] if c["name"] == manifests.NAME)
    return init, main


def rehearse_mode(scratch: _Scratch, objs: list[dict], *, ds_name: str, mode: str, node: str,
                  profile: str, source: str, files: dict[str, bytes]) -> list[Check]:
    """One selection mode: the init container, then (when it passed) the main container."""
    pod = _pod(objs, ds_name)
    binds = volume_binds(objs, pod, scratch)
    init, main = _containers(pod)
    console.step(f"{mode}: DaemonSet {ds_name}, node {node}: init container {init['name']}")
    run = run_to_end(scratch, container_kwargs(init, binds, node=node, token=scratch.token,
                                               extra_env={"DPA_DRY_RUN": "1"}))
    cfg = next(m for m in init["volumeMounts"] if m["mountPath"] == manifests.CONFIG_ROOT)
    check = check_init_selected(run, mode=mode, profile=profile, source=source, files=files,
                                materialized=binds[cfg["name"]])
    _say(check)
    if not check.ok:
        return [check]
    console.step(f"{mode}: main container {main['name']}")
    checks = main_container_checks(scratch, container_kwargs(main, binds, node=node,
                                                                token=scratch.token), mode)
    for c in checks:
        _say(c)
    return [check, *checks]


def rehearse_no_config(scratch: _Scratch, objs: list[dict]) -> Check:
    pod = _pod(objs, manifests.NAME)
    binds = volume_binds(objs, pod, scratch)
    init, _ = _containers(pod)
    console.step(f"node-name mode: node {NO_CONFIG_NODE} (no DPA set): init container")
    run = run_to_end(scratch, container_kwargs(init, binds, node=NO_CONFIG_NODE,
                                               token=scratch.token,
                                               extra_env={"DPA_DRY_RUN": "1"}))
    check = check_no_config(run, NO_CONFIG_NODE)
    _say(check)
    return check


def _say(c: Check) -> None:
    console.info(f"  {'ok  ' if c.ok else 'FAIL'} {c.name}" + ("" if c.ok else f": {c.detail}"))


def _rehearsal_sets(scratch: _Scratch, facts: manifests.ImageFacts) -> Path:
    """Without ``--dpa-configs``: a set for node :data:`REHEARSAL_NODE`, the image's
    ``default`` files with a marker line, so the node-name mode has a node to select."""
    if "default" not in facts.profiles:
        raise RehearsalError(f"{facts.ref} ships no default DPA set; give --dpa-configs DIR")
    root = scratch.tempdir("dpa-configs")
    d = root / REHEARSAL_NODE
    d.mkdir()
    for fname in manifests.DPA_FILES:
        data = facts.profiles["default"].get(fname, b"")
        (d / fname).write_bytes(data + f"<!-- askbuild rehearsal: {REHEARSAL_NODE} -->\n"
                                .encode())
    return root


def _check_engine_image(scratch: _Scratch, settings: Settings,
                        facts: manifests.ImageFacts) -> None:
    """The engine holds ``facts.ref`` as the image ``inv image`` built, and its init_dpa.sh has
    the dry run (else nothing is run: a module must never be loaded on the build host)."""
    import docker.errors
    client = scratch.client
    again = settings.command("image", *imaging.tag_words(facts.tag))
    try:
        img = client.images.get(facts.ref)
    except docker.errors.ImageNotFound as e:
        raise RehearsalError(f"{facts.ref} is not loaded in the engine at "
                             f"{dockerhost.engine_host()}", fix=f"run `{again}`") from e
    if img.id != facts.image_id:
        raise RehearsalError(f"{facts.ref} in the engine is {img.id}, but the last `inv image` "
                             f"built {facts.image_id}", fix=f"run `{again}` to load it")
    run = run_to_end(scratch, {
        "image": facts.ref, "entrypoint": ["/bin/sh", "-c"],
        "command": ["grep -c DPA_DRY_RUN /bin/init_dpa.sh || true"], "network_mode": "none",
        "platform": "linux/arm64", "labels": {REHEARSAL_LABEL: scratch.token}})
    if run.stdout.strip() in ("", "0"):
        raise RehearsalError(f"{facts.ref}: /bin/init_dpa.sh has no DPA_DRY_RUN dry run; the "
                             "rehearsal would load modules on this host", fix=f"run `{again}`")


@runlock.exclusive("manifests.rehearse")
def rehearse(settings: Settings, *, tag: str = imaging.DEFAULT_TAG,
             dpa_configs: str | Path | None = None) -> RehearsalReport:
    """``inv manifests.rehearse``: the scenarios of the module docstring; a report line per
    check, and an :class:`ImageError` naming every failed check."""
    client = imaging.docker_client()
    if client is None:
        raise UserError(f"no Docker engine reachable at {dockerhost.engine_host()}: cannot "
                        "rehearse the manifests",
                        fix="start one (dockerd --iptables=false --bridge=none "
                            "--storage-driver=vfs &) or set DOCKER_HOST")
    scratch = _Scratch(client)
    try:
        facts = manifests.image_facts(settings, tag)
        report = RehearsalReport(facts.ref, facts.image_id)
        _check_engine_image(scratch, settings, facts)
        console.step(f"manifests.rehearse {facts.ref} ({facts.image_id}) under qemu")
        sets_dir = Path(dpa_configs) if dpa_configs else _rehearsal_sets(scratch, facts)
        user = manifests.read_user_sets(sets_dir, by_label=False)
        node = sorted(user)[0]
        _, objs = manifests.generate(settings, tag=tag, dpa_configs=sets_dir)
        report.checks += rehearse_mode(scratch, objs, ds_name=manifests.NAME,
                                       mode="node-name mode", node=node, profile=node,
                                       source="NODE_NAME", files=user[node])
        report.checks.append(rehearse_no_config(scratch, objs))
        profile = next((p for p in facts.profiles if p != "default"), "default")
        _, objs = manifests.generate(settings, tag=tag,
                                     by_label=manifests.PROFILE_LABEL_EXAMPLE)
        report.checks += rehearse_mode(scratch, objs, ds_name=f"{manifests.NAME}-{profile}",
                                       mode="by-label mode", node=OTHER_NODE, profile=profile,
                                       source="MONOK8S_HW_PROFILE",
                                       files=facts.profiles[profile])
    finally:
        scratch.close()
        client.close()
    failed = report.failed
    if failed:
        raise ImageError(f"manifests.rehearse {report.ref}: {len(failed)} of "
                         f"{len(report.checks)} checks failed: "
                         + "; ".join(c.name for c in failed),
                         fix="see the FAIL lines above")
    console.info(f"{report.ref}: all {len(report.checks)} rehearsal checks passed")
    return report
