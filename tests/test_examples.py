"""Example upstreams are deterministic, so a profile can lock them like real upstreams."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

from askbuild import examples, gitutil
from askbuild.settings import Settings


def make_project(root: Path) -> Settings:
    ex = root / "examples"
    (ex / "vendor" / "thing" / "src").mkdir(parents=True)
    (ex / "vendor" / "thing" / "src" / "main.c").write_text("int main(void){return 0;}\n")
    (ex / "vendor" / "thing" / "build.sh").write_text("#!/bin/sh\necho hi\n")
    (ex / "vendor" / "thing" / "build.sh").chmod(0o755)
    (ex / "vendor" / "lib-1.0").mkdir(parents=True)
    (ex / "vendor" / "lib-1.0" / "configure").write_text("#!/bin/sh\n")
    (ex / "vendor" / "lib-1.0" / "configure").chmod(0o755)
    (ex / "vendor" / "lib-1.0" / "crlf.txt").write_bytes(b"a\r\nb\r\n")
    (ex / "upstreams.toml").write_text(
        '[thing]\nkind = "git"\ntree = "vendor/thing"\ntag = "v1.0"\n\n'
        '[lib]\nkind = "tarball"\ntree = "vendor/lib-1.0"\nfile = "lib-1.0.tar.xz"\n'
        'top = "lib-1.0"\n')
    (root / "recipes").mkdir()
    (root / "recipes" / "sources.toml").write_text("")
    return Settings(project_root=root, work_dir=root / "work", cache_dir=root / "cache")


def test_publish_is_deterministic_across_places(tmp_path):
    a = examples.publish(make_project(tmp_path / "a"))
    b = examples.publish(make_project(tmp_path / "b"))
    assert a["thing"]["commit"] == b["thing"]["commit"]
    assert gitutil.is_sha(a["thing"]["commit"])
    assert a["lib"]["sha256"] == b["lib"]["sha256"]
    data = Path(a["lib"]["url"].removeprefix("file://")).read_bytes()
    assert hashlib.sha256(data).hexdigest() == a["lib"]["sha256"] and len(data) == a["lib"]["size"]


def test_published_tarball_is_clean(tmp_path):
    s = make_project(tmp_path)
    up = examples.publish(s)
    data = Path(up["lib"]["url"].removeprefix("file://")).read_bytes()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names) and names[0] == "lib-1.0"
        assert all(m.uid == 0 and m.gid == 0 and m.mtime == examples.EPOCH for m in members)
        assert tar.getmember("lib-1.0/configure").mode == 0o755
        assert tar.extractfile("lib-1.0/crlf.txt").read() == b"a\r\nb\r\n"


def test_published_repo_has_tag_and_serves_shas(tmp_path):
    s = make_project(tmp_path)
    up = examples.publish(s)
    repo = Path(up["thing"]["url"].removeprefix("file://"))
    assert gitutil.out(["rev-parse", "v1.0^{commit}"], cwd=repo) == up["thing"]["commit"]
    assert gitutil.out(["config", "uploadpack.allowAnySHA1InWant"], cwd=repo) == "true"
    mode = gitutil.out(["ls-tree", "HEAD", "--", "build.sh"], cwd=repo).split()[0]
    assert mode == "100755"


def test_publish_is_skipped_when_inputs_unchanged_and_redone_when_changed(tmp_path):
    s = make_project(tmp_path)
    first = examples.publish(s)
    stamp = examples.upstreams_dir(s) / "published.json"
    mtime = stamp.stat().st_mtime_ns
    assert examples.publish(s) == first
    assert stamp.stat().st_mtime_ns == mtime
    (tmp_path / "examples" / "vendor" / "thing" / "src" / "main.c").write_text("int x;\n")
    second = examples.publish(s)
    assert second["thing"]["commit"] != first["thing"]["commit"]
    assert second["lib"] == first["lib"]


def test_a_damaged_stamp_means_publish_again(tmp_path):
    s = make_project(tmp_path)
    first = examples.publish(s)
    stamp = examples.upstreams_dir(s) / "published.json"
    stamp.write_text('{"inputs": ')          # a run killed mid-write on a non-atomic fs
    assert examples.publish(s) == first
    assert "upstreams" in stamp.read_text()


def test_a_stamp_whose_content_is_gone_means_publish_again(tmp_path):
    import shutil
    s = make_project(tmp_path)
    first = examples.publish(s)
    dest = examples.upstreams_dir(s)
    shutil.rmtree(dest / "thing.git")                 # a run killed while replacing it
    (dest / "lib-1.0.tar.xz").write_bytes(b"half")
    assert examples.publish(s) == first
    assert gitutil.out(["rev-parse", "v1.0^{commit}"], cwd=dest / "thing.git") == \
        first["thing"]["commit"]
    assert hashlib.sha256((dest / "lib-1.0.tar.xz").read_bytes()).hexdigest() == \
        first["lib"]["sha256"]


def test_leftovers_of_a_killed_publisher_are_removed(tmp_path):
    s = make_project(tmp_path)
    dest = examples.upstreams_dir(s)
    dead = [dest / ".publish-4242-deadbeef" / "thing.work" / "x",
            dest / ".thing.git.old-4242-deadbeef" / "HEAD", dest / ".published.json.1.2.tmp"]
    for f in dead:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text("half\n")
    examples.publish(s)
    assert sorted(p.name for p in dest.iterdir()) == [
        ".publish.lock", "lib-1.0.tar.xz", "published.json", "thing.git"]
