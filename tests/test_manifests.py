"""``inv manifests``: the objects that run the image, from a real ``inv image`` archive and record
(the fixture staging tree of tests/imagefixtures, assembled with ``--no-load``: no engine).

What a user sees: the YAML (objects, names, labels, annotations, both selection modes, the
ConfigMap items as the pod sees them), that it is the same bytes twice, round-trips through a
YAML parser and validates against the Kubernetes schema, that nothing publishes the cmm CLI
port, and one clear message (never a traceback, nothing written) for each bad input.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import faults
import imagefixtures as fx
import kubernetes_validate
import pytest
import yaml

from askbuild import imaging, manifests
from askbuild.errors import AskbuildError
from askbuild.refs import BASE_TAG

pytestmark = pytest.mark.skipif(not shutil.which(fx.CC), reason="needs the cross compiler")

TAG = "mtest"
LABEL = "monok8s.io/hardware-profile"
FILES = manifests.DPA_FILES


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A work directory where `inv image --tag mtest --no-load` ran (fixture staging tree)."""
    tmp = tmp_path_factory.mktemp("manifests")
    fx.make_work(tmp / "work", fx.compile_programs(tmp / "programs"))
    settings = fx.settings_for(tmp / "work")
    result = imaging.image(settings, tag=TAG, load=False)
    return settings, result


def _sets(root: Path, names: list[str], *, marker: str = "") -> Path:
    for name in names:
        (root / name).mkdir(parents=True)
        for f in FILES:
            (root / name / f).write_text(f"<!-- {marker or name} {f} -->\n<x/>\n")
    return root


def _write(settings, tmp_path: Path, name: str = "out.yaml", **kw) -> tuple[bytes, list[dict]]:
    out = tmp_path / name
    data = manifests.write(settings, tag=TAG, output=out, **kw)
    assert out.read_bytes() == data
    return data, [d for d in yaml.safe_load_all(data) if d is not None]


def _kind(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def _pod(ds):
    return ds["spec"]["template"]["spec"]


def _env(container) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_node_name_mode_objects(built, tmp_path):
    settings, result = built
    data, objs = _write(settings, tmp_path, dpa_configs=_sets(tmp_path / "cfg", ["node-a"]))
    assert [(o["kind"], o["metadata"]["name"]) for o in objs] == [
        ("Namespace", "mono-system"), ("ConfigMap", "cmm-dpa-configs"), ("DaemonSet", "cmm")]
    ds = objs[2]
    meta = ds["metadata"]
    assert meta["namespace"] == "mono-system"
    assert meta["labels"] == {
        "app.kubernetes.io/name": "cmm", "app.kubernetes.io/instance": "cmm",
        "app.kubernetes.io/version": TAG, "app.kubernetes.io/component": "fast-path",
        "app.kubernetes.io/part-of": "monok8s", "app.kubernetes.io/managed-by": "askbuild"}
    commit = subprocess.run(["git", "rev-parse", BASE_TAG], cwd=settings.source_tree("ask"),
                            capture_output=True, text=True, check=True).stdout.strip()
    ann = meta["annotations"]
    assert ann["askbuild.monok8s.io/image-id"] == result.image_id
    assert ann["askbuild.monok8s.io/ask-commit"] == commit
    assert ann["askbuild.monok8s.io/image"] == f"localhost/monok8s/cmm:{TAG}"
    assert ann["askbuild.monok8s.io/kernel-release"] == fx.RELEASE
    spec = ds["spec"]
    assert spec["updateStrategy"] == {"type": "RollingUpdate",
                                      "rollingUpdate": {"maxUnavailable": 1}}
    assert spec["template"]["metadata"]["annotations"] == ann     # a new build rolls the pods
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    pod = _pod(ds)
    assert pod["hostNetwork"] is True
    assert pod["priorityClassName"] == "system-node-critical"
    assert {"key": "node-role.kubernetes.io/control-plane", "operator": "Exists",
            "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux", "kubernetes.io/arch": "arm64"}
    [init] = pod["initContainers"]
    [main] = pod["containers"]
    for c in (init, main):
        assert c["image"] == f"localhost/monok8s/cmm:{TAG}"
        assert c["imagePullPolicy"] == "Never"
    assert init["name"] == "dpa-app"
    assert init["command"] == ["/usr/share/monok8s/select-dpa-config.sh"]
    env = _env(init)
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert "MONOK8S_HW_PROFILE" not in env
    assert "DPA_DRY_RUN" not in env and "INIT_DPA_DRY_RUN" not in env
    assert init["securityContext"] == {"privileged": True}
    assert {"name": "host-modules", "mountPath": "/host/lib/modules", "readOnly": True} in \
        init["volumeMounts"]
    assert env["MODPROBE_ROOT"] == "/host"
    assert main["name"] == "cmm"
    assert main["command"] == ["/usr/share/monok8s/cmm-entrypoint.sh"]
    assert _env(main) == {"CMM_MAX_CONNECTIONS": "131072"}
    assert main["securityContext"]["capabilities"] == {"drop": ["ALL"],
                                                       "add": ["NET_ADMIN", "NET_RAW"]}
    assert main["securityContext"].get("privileged") is False


def test_configmap_items_give_the_pod_every_set_at_its_path(built, tmp_path):
    """The image's own sets (default, gateway-dk: the volume hides the image's directory) and
    the user's, each as <root>/<name>/<file>; keys hold no '/'; the bytes are the files'."""
    settings, _ = built
    cfg = _sets(tmp_path / "cfg", ["node-a", "node-b.example.com"])
    _, objs = _write(settings, tmp_path, dpa_configs=cfg)
    [cm] = _kind(objs, "ConfigMap")
    [ds] = _kind(objs, "DaemonSet")
    [vol] = [v for v in _pod(ds)["volumes"] if "configMap" in v]
    assert vol["configMap"]["name"] == cm["metadata"]["name"] == "cmm-dpa-configs"
    assert vol["configMap"]["defaultMode"] == 0o644
    [mount] = [m for m in _pod(ds)["initContainers"][0]["volumeMounts"]
               if m["name"] == vol["name"]]
    assert mount["mountPath"] == "/etc/monok8s/dpa-configs"
    seen = {}
    for item in vol["configMap"]["items"]:
        assert "/" not in item["key"]
        seen[item["path"]] = cm["data"][item["key"]]
    names = ["default", "gateway-dk", "node-a", "node-b.example.com"]
    assert sorted(seen) == sorted(f"{n}/{f}" for n in names for f in FILES)
    assert seen["default/cdx_cfg.xml"] == fx.ASK_FILES["dpa_app/files/etc/cdx_cfg.xml"]
    assert seen["gateway-dk/cdx_cfg.xml"] == fx.ASK_FILES["config/gateway-dk/cdx_cfg.xml"]
    assert seen["gateway-dk/cdx_pcd.xml"] == fx.ASK_FILES["dpa_app/files/etc/cdx_pcd.xml"]
    assert seen["default/hxs_pdl_v3.xml"] == fx.FMC_FILES["etc/fmc/config/hxs_pdl_v3.xml"]
    assert seen["node-b.example.com/cdx_sp.xml"] == \
        (cfg / "node-b.example.com/cdx_sp.xml").read_text()


def test_by_label_mode_one_daemonset_per_profile(built, tmp_path):
    settings, _ = built
    cfg = _sets(tmp_path / "cfg", ["edge-v2"])
    _, objs = _write(settings, tmp_path, dpa_configs=cfg, by_label=LABEL)
    dss = {d["metadata"]["name"]: d for d in _kind(objs, "DaemonSet")}
    assert sorted(dss) == ["cmm-default", "cmm-edge-v2", "cmm-gateway-dk"]
    selectors = set()
    for name, ds in dss.items():
        profile = name.removeprefix("cmm-")
        pod = _pod(ds)
        assert pod["nodeSelector"][LABEL] == profile
        env = _env(pod["initContainers"][0])
        assert env["MONOK8S_HW_PROFILE"] == profile
        [vol] = [v for v in pod["volumes"] if "configMap" in v]
        assert sorted(i["path"] for i in vol["configMap"]["items"]) == \
            sorted(f"{profile}/{f}" for f in FILES)
        assert ds["metadata"]["labels"]["app.kubernetes.io/instance"] == name
        selectors.add(tuple(sorted(ds["spec"]["selector"]["matchLabels"].items())))
    assert len(selectors) == 3                  # no two DaemonSets claim the same pods


def test_options_no_namespace_and_max_connections(built, tmp_path):
    settings, _ = built
    _, objs = _write(settings, tmp_path, namespace=False, max_connections=4096,
                     by_label=LABEL)
    assert not _kind(objs, "Namespace")
    for ds in _kind(objs, "DaemonSet"):
        assert _env(_pod(ds)["containers"][0]) == {"CMM_MAX_CONNECTIONS": "4096"}


def test_same_bytes_twice_and_yaml_round_trip(built, tmp_path):
    settings, _ = built
    cfg = _sets(tmp_path / "cfg", ["node-a"])
    for by_label in (None, LABEL):
        first, objs = _write(settings, tmp_path, "a.yaml", dpa_configs=cfg, by_label=by_label)
        second, _ = _write(settings, tmp_path, "b.yaml", dpa_configs=cfg, by_label=by_label)
        assert first == second
        _, built_objs = manifests.generate(settings, tag=TAG, dpa_configs=cfg, by_label=by_label)
        assert objs == built_objs               # the YAML says exactly what was built
        assert b"&id" not in first and b"*id" not in first      # no anchors/aliases


def test_every_object_is_valid_against_the_kubernetes_schema(built, tmp_path):
    settings, _ = built
    cfg = _sets(tmp_path / "cfg", ["node-a"])
    for by_label in (None, LABEL):
        _, objs = _write(settings, tmp_path, dpa_configs=cfg, by_label=by_label, check=True)
        for obj in objs:
            assert kubernetes_validate.validate(obj, manifests.K8S_VERSION, strict=True) == \
                manifests.K8S_VERSION


def test_check_names_the_object_and_the_schema_message(built):
    settings, _ = built
    _, objs = manifests.generate(settings, tag=TAG, by_label=LABEL)
    bad = copy.deepcopy(objs)
    _pod(bad[-1])["hostNetwork"] = "yes"
    with pytest.raises(manifests.SchemaError) as e:
        manifests.validate(bad)
    msg = str(e.value)
    assert f"DaemonSet/{bad[-1]['metadata']['name']}" in msg
    assert "spec.template.spec.hostNetwork" in msg and "'yes' is not of type 'boolean'" in msg
    typo = copy.deepcopy(objs)
    _pod(typo[-1])["containers"][0]["imagePulPolicy"] = "Never"
    with pytest.raises(manifests.SchemaError, match="imagePulPolicy"):
        manifests.validate(typo)


def test_nothing_publishes_the_cli_port(built, tmp_path):
    settings, _ = built
    for by_label in (None, LABEL):
        data, objs = _write(settings, tmp_path, by_label=by_label)
        text = data.decode()
        assert all(o["kind"] in ("Namespace", "ConfigMap", "DaemonSet") for o in objs)
        body = "\n".join(ln for ln in text.splitlines() if not ln.startswith("#"))
        for word in ("hostPort", "containerPort", "ports:", "2103", "Service"):
            assert word not in body
        comments = [ln for ln in text.splitlines() if ln.startswith("#")]
        assert "#   kubectl -n mono-system port-forward pod/<pod> 12345:2103" in comments
        assert any("admin/admin" in ln and "change it before any exposure" in ln
                   for ln in comments)


@pytest.mark.parametrize("case", ["missing-file", "bad-node-name", "bad-profile-name",
                                  "too-large", "unknown-tag", "bad-label-key",
                                  "zero-connections", "text-connections", "not-a-directory"])
def test_bad_input_gives_its_message_and_writes_nothing(built, tmp_path, case):
    settings, _ = built
    cfg = tmp_path / "cfg"
    kw = {"tag": TAG}
    if case == "missing-file":
        _sets(cfg, ["node-a"])
        (cfg / "node-a/hxs_pdl_v3.xml").unlink()
        kw["dpa_configs"] = cfg
        err, needles = manifests.DpaConfigError, [f"{cfg / 'node-a'} has no hxs_pdl_v3.xml"]
    elif case == "bad-node-name":
        _sets(cfg, ["Node_A"])
        kw["dpa_configs"] = cfg
        err, needles = manifests.InvalidNameError, ["'Node_A' is not a valid node name",
                                                    "DNS-1123 subdomain"]
    elif case == "bad-profile-name":
        _sets(cfg, ["gw.v2"])
        kw.update(dpa_configs=cfg, by_label=LABEL)
        err, needles = manifests.InvalidNameError, ["profile name 'gw.v2'", "DNS-1123 label"]
    elif case == "too-large":
        _sets(cfg, ["node-a"])
        (cfg / "node-a/cdx_pcd.xml").write_bytes(b"<x/>\n" * 220_000)
        kw["dpa_configs"] = cfg
        err, needles = manifests.ConfigMapTooLarge, ["ConfigMap cmm-dpa-configs would hold 11",
                                                     "over the 1 MiB limit (1048576 bytes)",
                                                     "node-a (11"]
    elif case == "unknown-tag":
        kw["tag"] = "never-built"
        err, needles = manifests.UnknownImageError, [
            "image tag 'never-built' was never built",
            f"the last `inv image` there built localhost/monok8s/cmm:{TAG}",
            "inv image --tag never-built"]
    elif case == "bad-label-key":
        kw["by_label"] = "Hardware Profile"
        err, needles = manifests.InvalidNameError, ["--by-label 'Hardware Profile' is not a "
                                                    "valid label key"]
    elif case == "zero-connections":
        kw["max_connections"] = 0
        err, needles = manifests.ManifestError, ["--max-connections 0 is not a positive integer"]
    elif case == "text-connections":
        kw["max_connections"] = "lots"
        err, needles = manifests.ManifestError, ["--max-connections 'lots' is not a positive"]
    else:
        cfg.write_text("")
        kw["dpa_configs"] = cfg
        err, needles = manifests.DpaConfigError, [f"--dpa-configs {cfg}: not a directory"]
    out = tmp_path / "out.yaml"
    with pytest.raises(err) as e:
        manifests.write(settings, output=out, **kw)
    assert isinstance(e.value, AskbuildError) and e.value.fix
    for n in needles:
        assert n in str(e.value)
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")] == []


def test_cli_writes_the_yaml_on_stdout_and_errors_without_traceback(built):
    settings, _ = built
    common = ["--work-dir", str(settings.work_dir), "--cache-dir", str(settings.cache_dir)]
    ok = faults.inv("manifests", "--tag", TAG, "--check", *common)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.encode() == manifests.write(settings, tag=TAG)
    assert f"valid against the Kubernetes {manifests.K8S_VERSION} schema" in ok.stderr
    bad = faults.inv("manifests", "--tag", "nope", "--by-label", LABEL, *common)
    assert bad.returncode == 1 and bad.stdout == ""
    faults.assert_clean_message(bad, "image tag 'nope' was never built", "inv image --tag nope")
