"""Cross-cutting promises of the CLI, seen as a user sees them: a second run waits for the
first and says for whom; every failure is a message with an exit code, never a traceback; a
signal stops the run and its children at once; leftovers of a killed run disappear."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import faults
import pytest

from askbuild import cli


def _env(project) -> dict[str, str]:
    return {"ASKBUILD_PROJECT_ROOT": str(project.root), "ASKBUILD_WORK_DIR": str(project.work),
            "ASKBUILD_CACHE_DIR": str(project.cache)}


@pytest.fixture
def fetched(project, git_upstream):
    up = git_upstream("widget")
    up.release("v1.0", {"main.c": "int main;\n"})
    project.add_git("widget", up.url, "v1.0", up.rev("v1.0"))
    return project


def _hold_work_lock(project, seconds: float) -> subprocess.Popen:
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from askbuild import runlock
        from askbuild.settings import Settings
        s = Settings(project_root=Path({str(project.root)!r}), work_dir=Path({str(project.work)!r}),
                     cache_dir=Path({str(project.cache)!r}))
        with runlock.work_dir(s, "holder-test"):
            print("held", flush=True)
            time.sleep({seconds})
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_run_waits_for_the_first_and_names_it(fetched):
    holder = _hold_work_lock(fetched, 3)
    t0 = time.monotonic()
    proc = faults.inv("fetch", env=_env(fetched))
    waited = time.monotonic() - t0
    holder.wait()
    assert proc.returncode == 0, proc.stderr
    assert f"waiting for another askbuild run (pid {holder.pid}, inv holder-test)" in proc.stderr
    assert waited >= 2, "the second run did not wait for the lock"
    assert (fetched.work / "src" / "widget" / "main.c").is_file()


def test_records_half_written_by_a_killed_run_are_swept(fetched):
    state = fetched.work / "state"
    state.mkdir(parents=True)
    stale = [state / ".patch-widget.json.4242.1.tmp", fetched.work / ".build-manifest.json.9.9.tmp"]
    for p in stale:
        p.write_text('{"half": ')
    proc = faults.inv("fetch", env=_env(fetched))
    assert proc.returncode == 0, proc.stderr
    assert not any(p.exists() for p in stale)


def test_a_full_disk_names_the_path_and_the_free_space(fetched, tmp_path):
    with faults.tmpfs(tmp_path / "small", "1m") as small:
        faults.fill(small)
        env = {**_env(fetched), "ASKBUILD_WORK_DIR": str(small / "work")}
        proc = faults.inv("fetch", env=env)
    assert proc.returncode == 1, proc.stderr
    faults.assert_clean_message(proc, "no space left on device", str(small), "MiB free")
    assert "check the network" not in proc.stderr


def test_os_error_message_for_permission_and_enospc(tmp_path):
    msg, fix = cli.os_error_message(OSError(28, "No space left on device", str(tmp_path / "x")))
    assert msg.startswith(f"{tmp_path / 'x'}: no space left on device (")
    assert "MiB free on the file system of" in msg and "run the same command again" in fix
    msg, fix = cli.os_error_message(PermissionError(13, "Permission denied", "/root/x"))
    assert msg == "/root/x: Permission denied" and "permissions" in fix


def test_sigterm_stops_the_run_and_its_children_at_once(fetched, tmp_path):
    """A verb whose child runs for minutes: SIGTERM ends askbuild with 143 in a second or two
    and no child survives (the child is in its own process group, so only askbuild could have
    stopped it)."""
    marker = tmp_path / "child-started"
    script = tmp_path / "slow.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from askbuild import cli, procs
        def fn(settings):
            procs.run(["sh", "-c", "touch {marker}; sleep 300 & sleep 300; wait"])
        cli.main(fn)
    """))
    env = dict(os.environ, **_env(fetched), CI="true")
    proc = subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists()
    children = _children_groups(proc.pid)
    assert children, "the child should run in its own process group"
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    took = time.monotonic() - t0
    assert proc.returncode == 143, err
    assert took < 3, f"took {took:.1f}s to stop"
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    time.sleep(0.2)
    assert not any(faults.group_alive(g) for g in children), "a child survived SIGTERM"


@pytest.mark.parametrize("quick", [False, True])
def test_children_start_with_no_signal_held_back_and_are_stopped_by_terminate_all(quick):
    """A child started the cheap way (``quick``: vfork, no PDEATHSIG) is still registered,
    and neither kind inherits the SIGINT/SIGTERM mask askbuild holds while it starts one."""
    from askbuild import procs
    proc = procs.popen(["sleep", "300"], quick=quick)
    try:
        status = dict(ln.split(":\t", 1) for ln in
                      open(f"/proc/{proc.pid}/status").read().splitlines() if ":\t" in ln)
        assert int(status["SigBlk"], 16) == 0, status["SigBlk"]
        t0 = time.monotonic()
        procs.terminate_all()
        assert proc.poll() == -signal.SIGTERM and time.monotonic() - t0 < 1
    finally:
        procs.kill_group(proc, signal.SIGKILL)
        procs.forget(proc)


def test_sigint_exits_130_without_a_traceback(fetched, tmp_path):
    proc = _start_sleeping_verb(fetched, tmp_path)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    assert "interrupted (SIGINT)" in err and "Traceback" not in err


def test_kill_9_of_askbuild_takes_its_children_along(fetched, tmp_path):
    proc = _start_sleeping_verb(fetched, tmp_path)
    deadline = time.monotonic() + 20
    while not _children_groups(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    children = _children_groups(proc.pid)
    assert children
    proc.kill()  # SIGKILL to askbuild alone: no handler runs
    proc.communicate(timeout=10)
    time.sleep(0.5)
    assert not any(faults.group_alive(g) for g in children), "a child outlived kill -9"


def test_an_unexpected_exception_is_a_message_and_exit_3(tmp_path, fetched):
    script = tmp_path / "bug.py"
    script.write_text("from askbuild import cli\n"
                      "def fn(s):\n    raise TypeError('boom')\n"
                      "cli.main(fn)\n")
    env = dict(os.environ, **_env(fetched), CI="true")
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
    assert proc.returncode == 3
    assert "internal error in askbuild: TypeError: boom" in proc.stderr
    assert "--debug" in proc.stderr and "Traceback" not in proc.stderr


def _start_sleeping_verb(project, tmp_path) -> subprocess.Popen:
    """askbuild's CLI running a verb whose child sleeps for minutes."""
    script = tmp_path / "slow.py"
    script.write_text("from askbuild import cli, procs\n"
                      "cli.main(lambda s: procs.run(['sleep', '300']))\n")
    env = dict(os.environ, **_env(project), CI="true")
    return subprocess.Popen([sys.executable, str(script)], env=env, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _children_groups(pid: int) -> list[int]:
    """Process group ids of the direct children of ``pid`` that lead their own group."""
    groups = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = open(f"/proc/{d}/stat").read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        ppid, pgid = int(fields[1]), int(fields[2])
        if ppid == pid and pgid == int(d):
            groups.append(pgid)
    return groups
