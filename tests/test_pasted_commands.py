"""Every command askbuild prints works when pasted (issue 10, point 2: build, image, lock).

The real CLI (``python -m invoke``) runs a fixture project with ``--work-dir`` and
``--cache-dir`` in directories whose names hold a space and ``--profile pasted`` (the project's
default profile has no sources), while decoy ``ASKBUILD_WORK_DIR`` / ``ASKBUILD_CACHE_DIR``
point elsewhere: a printed command that dropped an option would act on the decoys (or on the
empty default profile).  Each test triggers an advice, takes the backticked command out of the
message, runs it as the shell would split it (``inv`` -> ``python -m invoke``) in the same
environment, and checks that it acted on the same work directory and cache.
"""

from __future__ import annotations

import re
import shlex
import shutil
import time
from pathlib import Path

import faults
import pytest
from patchfixtures import _template

REPO = Path(__file__).resolve().parent.parent
PROFILE = "pasted"
#: the component's step sleeps so that a second run meets the work-dir lock
RECIPE = """\
source = "up"
inputs = ["."]
steps = [["sh", "-c", "sleep 2; cat lib/*.c > out.txt"]]
[[artifacts]]
path = "out.txt"
stage = "usr/share/t/app.txt"
"""
BACKTICKED = re.compile(r"`([^`\n]+)`")
WAITING = re.compile(r"waiting for another askbuild run \(pid (\d+), (inv [^\n]*?)\) to finish")

pytestmark = pytest.mark.skipif(not shutil.which("aarch64-linux-gnu-gcc"),
                                reason="the build checks the cross compiler")


class Fixture:
    """The project (profile ``pasted``: one git source ``up``, locked, with a one-patch
    series; one component ``app``), the work and cache directories the options name, and the
    decoys the environment names."""

    def __init__(self, tmp: Path) -> None:
        base, up = _template(["clean"])
        shutil.copytree(base / "upstreams", tmp / "upstreams", symlinks=True)
        url = f"file://{tmp / 'upstreams' / up.bare.name}"
        self.root = tmp / "project"
        recipes = self.root / "recipes"
        (recipes / "profiles" / PROFILE).mkdir(parents=True)
        (recipes / "sources.toml").write_text("# the default profile: no sources\n")
        (recipes / "profiles" / f"{PROFILE}.toml").write_text(
            f'[up]\nkind = "git"\nurl = "{url}"\nref = "v1"\ncommit = "{up.v1}"\n')
        (recipes / "profiles" / PROFILE / "patches.toml").write_text(
            '[up]\nlocal = ["patches/up"]\n')
        (recipes / "components").mkdir()
        (recipes / "components" / "app.toml").write_text(RECIPE)
        shutil.copytree(base / "series", self.root / "patches" / "up")
        shutil.copytree(REPO / "images", self.root / "images")
        self.work = tmp / "work dir"
        self.cache = tmp / "cache dir"
        self.decoys = [tmp / "decoy-work", tmp / "decoy-cache"]
        self.env = {"ASKBUILD_PROJECT_ROOT": str(self.root),
                    "ASKBUILD_WORK_DIR": str(self.decoys[0]),
                    "ASKBUILD_CACHE_DIR": str(self.decoys[1])}
        self.opts = ["--work-dir", str(self.work), "--cache-dir", str(self.cache),
                     "--profile", PROFILE]

    def inv(self, *args: str):
        return faults.inv(*args, env=self.env, timeout=300)

    def paste(self, command: str):
        """Run a printed command as a shell would split it, ``inv`` being this checkout's."""
        words = shlex.split(command)
        assert words[0] == "inv", command
        return self.inv(*words[1:])

    @property
    def staged(self) -> Path:
        return self.work / "staging" / "usr" / "share" / "t" / "app.txt"

    def assert_decoys_untouched(self) -> None:
        assert not any(d.exists() for d in self.decoys), "a command acted on the decoy dirs"


@pytest.fixture
def fx(tmp_path) -> Fixture:
    return Fixture(tmp_path)


def commands(text: str, verb: str) -> list[str]:
    """The backticked ``inv VERB ...`` commands of a message, in order."""
    return [c for c in BACKTICKED.findall(text) if c.startswith(f"inv {verb} ")
            or c == f"inv {verb}"]


def option(command: str, name: str) -> str | None:
    words = shlex.split(command)
    return words[words.index(name) + 1] if name in words else None


def test_image_before_build_advises_a_build_that_builds_this_work_dir(fx):
    proc = fx.inv("image", "--no-load", *fx.opts)
    assert proc.returncode == 2, proc.stderr
    assert f"the staging tree {fx.work / 'staging'} does not exist" in proc.stderr
    (build,) = commands(proc.stderr, "build")
    assert option(build, "--work-dir") == str(fx.work)
    assert option(build, "--cache-dir") == str(fx.cache)
    assert option(build, "--profile") == PROFILE
    done = fx.paste(build)
    assert done.returncode == 0, done.stderr
    assert fx.staged.read_text().startswith("clean line 1")
    assert (fx.cache / "git").is_dir()
    fx.assert_decoys_untouched()


def test_a_series_changed_since_patch_advises_fetch_and_patch_that_let_the_build_go_on(fx):
    first = fx.inv("build", *fx.opts)
    assert first.returncode == 0, first.stderr
    patch = next((fx.root / "patches" / "up").glob("*.patch"))
    patch.write_text(patch.read_text().replace("clean line 5 OURS", "clean line 5 EDITED"))
    refused = fx.inv("build", *fx.opts)
    assert refused.returncode == 1, refused.stderr
    assert "not the current patch series" in refused.stderr
    # the build's own advice: its fix line, then "(run `inv patch --source up ...`)"
    fix = next(ln for ln in refused.stderr.splitlines() if ln.strip().startswith("fix:"))
    every, this_source = BACKTICKED.findall(fix)
    for command in [*every.split(" && "), *this_source.split(" && ")]:
        assert option(command, "--work-dir") == str(fx.work), command
        assert option(command, "--profile") == PROFILE, command
    fetch, patch_up = this_source.split(" && ")
    assert shlex.split(fetch)[:4] == ["inv", "fetch", "--source", "up"]
    assert shlex.split(patch_up)[:4] == ["inv", "patch", "--source", "up"]
    (run,) = set(re.findall(r"\(run `(inv patch --source up [^`]*)`\)", refused.stderr))
    assert run == patch_up
    for command in (fetch, patch_up):
        done = fx.paste(command)
        assert done.returncode == 0, done.stderr
    built = fx.inv("build", *fx.opts)
    assert built.returncode == 0, built.stderr
    assert "clean line 5 EDITED" in fx.staged.read_text()
    fx.assert_decoys_untouched()


def _wait_for_owner(fx: Fixture, pid: int, timeout: float = 60) -> None:
    owner = fx.work / "state" / "askbuild.lock.owner"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if owner.is_file() and f"pid {pid}," in owner.read_text():
            return
        time.sleep(0.05)
    raise AssertionError("the first run never took the work-dir lock")


def test_the_lock_holder_and_the_partial_image_advice_name_this_work_dir(fx):
    holder = faults.start("build", *fx.opts, env=fx.env)
    try:
        _wait_for_owner(fx, holder.pid)
        waiter = fx.inv("image", "--no-load", "--offline", *fx.opts)
    finally:
        out, err = holder.communicate(timeout=300)
    assert holder.returncode == 0, err
    # The waiting run names the holder with its command, options included.
    m = WAITING.search(waiter.stderr)
    assert m and int(m.group(1)) == holder.pid, waiter.stderr
    held = m.group(2)
    assert shlex.split(held)[:2] == ["inv", "build"]
    assert option(held, "--work-dir") == str(fx.work)
    assert option(held, "--cache-dir") == str(fx.cache)
    again = fx.paste(held)
    assert again.returncode == 0, again.stderr
    assert fx.staged.is_file()
    # Then the image: incomplete (only "app" was built); the advice offers --partial.
    assert waiter.returncode == 2, waiter.stderr
    assert "the image would be incomplete" in waiter.stderr
    (partial,) = commands(waiter.stderr, "image")
    assert "--partial" in shlex.split(partial) and "--offline" in shlex.split(partial)
    assert option(partial, "--work-dir") == str(fx.work)
    tried = fx.paste(partial)
    # It gets past the advice (a partial image of this staging tree) and stops where an
    # offline run must: at the base layer, not cached in this cache directory.
    assert "the image would be incomplete" not in tried.stderr
    assert "partial image: missing" in tried.stderr
    assert "the base layer for this package set is not cached and --offline" in tried.stderr, \
        tried.stderr
    assert (fx.cache / "image" / "base").is_dir()
    fx.assert_decoys_untouched()


def test_the_load_instructions_quote_an_archive_path_with_a_space(tmp_path):
    from askbuild import imaging
    archive = tmp_path / "out dir" / "cmm.tar"
    text = imaging.load_instructions(archive, "localhost/monok8s/cmm:dev")
    loads = [ln.strip() for ln in text.splitlines() if " load -i " in ln or "import" in ln]
    assert len(loads) == 4
    for line in loads[:3]:
        assert shlex.split(line)[-1] == str(archive), line
    assert shlex.split(loads[3])[1] == str(archive)
