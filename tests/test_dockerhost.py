"""Where the container engine is (askbuild/dockerhost.py): a local socket that is not there
means no engine, said without importing the Docker SDK; any other address is left to the
SDK to try."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from askbuild import dockerhost

ROOT = Path(__file__).resolve().parent.parent


def test_a_missing_or_fake_socket_is_no_engine_and_a_real_one_is_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    assert dockerhost.no_engine_socket()
    (tmp_path / "file.sock").write_text("")
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/file.sock")
    assert dockerhost.no_engine_socket()                 # a file, not a socket
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(tmp_path / "real.sock"))
        monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/real.sock")
        assert not dockerhost.no_engine_socket()
    for other in ("tcp://127.0.0.1:2375", "ssh://user@host"):
        monkeypatch.setenv("DOCKER_HOST", other)
        assert not dockerhost.no_engine_socket()
    monkeypatch.delenv("DOCKER_HOST")
    assert dockerhost.engine_host() == "unix:///var/run/docker.sock"


def test_the_host_check_and_the_image_step_say_no_engine_without_the_sdk(tmp_path):
    """With no socket, ``inv doctor``'s engine line and the image step's client say so and
    the Docker SDK is never imported (it is when the socket is there: the SDK connects)."""
    code = ("import json, sys\n"
            "from askbuild import hostdeps, imaging\n"
            "print(json.dumps([hostdeps._docker(), imaging.docker_client() is None,\n"
            "                  'docker' in sys.modules]))\n")
    env = dict(os.environ, DOCKER_HOST=f"unix://{tmp_path}/none.sock")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True).stdout
    (ok, line), no_client, imported = json.loads(out)
    assert not ok and line == f"no engine at unix://{tmp_path}/none.sock (no such socket)"
    assert no_client and not imported
