"""Fixtures for the image tests: a staging tree as the build leaves it, built here from tiny C
programs with the real cross compiler, and small ASK/fmc work trees (git, tagged
``askbuild/base``).  Nothing here is vendor code: the programs only imitate the interfaces the
image contract relies on (cmm's ``-f``/``-n``/``-h``, foreground or daemon + syslog; dpa_app
reading its default XML paths; kernel modules with a ``.modinfo`` vermagic).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

from askbuild.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
CC = "aarch64-linux-gnu-gcc"
CXX = "aarch64-linux-gnu-g++"
RELEASE = "6.12.49-askbuild-fixture"
EPOCH = 1736935200              # 2025-01-15T10:00:00Z: the fixture ASK base commit date

CMM_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <unistd.h>
#include <syslog.h>
#include <libxml/parser.h>
#include <libcli.h>
#include <pcap/pcap.h>
#include <libmnl/libmnl.h>

/* keep the libraries in NEEDED without calling into them */
void *fixture_refs[] = { (void *)xmlCheckVersion, (void *)cli_init, (void *)pcap_lib_version,
                         (void *)mnl_nlmsg_size };
static volatile sig_atomic_t stop;
static void on_signal(int s) { stop = s; }

#if DAEMON
#define LOG(...) syslog(LOG_INFO, __VA_ARGS__)
#else
#define LOG(...) do { printf(__VA_ARGS__); printf("\n"); } while (0)
#endif

int main(int argc, char **argv)
{
    const char *conf = NULL, *max = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "-h")) {
            printf("usage: cmm [-f rules] [-n max-connections] [-h] [-v] (fixture %s)\n",
                   DAEMON ? "daemon" : "foreground");
            return 0;
        } else if (!strcmp(argv[i], "-v")) {
            printf("cmm fixture 1.0\n");
            return 0;
        } else if (!strcmp(argv[i], "-f") && i + 1 < argc) {
            conf = argv[++i];
        } else if (!strcmp(argv[i], "-n") && i + 1 < argc) {
            max = argv[++i];
        } else {
            fprintf(stderr, "cmm: unknown argument %s\n", argv[i]);
            return 2;
        }
    }
    if (!conf || !max) { fprintf(stderr, "cmm: -f and -n are required\n"); return 2; }
    FILE *f = fopen(conf, "r");
    if (!f) { fprintf(stderr, "cmm: cannot open %s\n", conf); return 3; }
    fclose(f);
    setvbuf(stdout, NULL, _IOLBF, 0);
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    const char *after = getenv("FIXTURE_EXIT_AFTER");
    int secs = after ? atoi(after) : -1;
#if DAEMON
    if (daemon(0, 0) != 0) return 4;
    openlog("cmm", LOG_PID, LOG_DAEMON);
    LOG("fixture cmm daemon started: rules %s, max %s", conf, max);
#else
    LOG("fixture cmm foreground started: rules %s, max %s", conf, max);
#endif
    while (!stop && secs != 0) {
        sleep(1);
        if (secs > 0) secs--;
    }
    if (stop) { LOG("fixture cmm got signal %d, exiting", (int)stop); return 0; }
    LOG("fixture cmm exiting on its own (FIXTURE_EXIT_AFTER)");
    return 7;
}
"""

DPA_APP_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <libxml/parser.h>
void *fixture_refs[] = { (void *)xmlCheckVersion };
static void show(const char *path)
{
    char line[256] = "";
    FILE *f = fopen(path, "r");
    if (!f) { printf("dpa_app: %s: missing\n", path); return; }
    if (!fgets(line, sizeof line, f)) line[0] = 0;
    fclose(f);
    line[strcspn(line, "\n")] = 0;
    printf("dpa_app: %s: %s\n", path, line);
}
int main(int argc, char **argv)
{
    printf("dpa_app: fixture running with %d argument(s)\n", argc - 1);
    const char *vars[] = { "CDX_CFG_FILE", "CDX_PCD_FILE", "CDX_PDL_FILE", "CDX_SP_FILE" };
    for (int i = 0; i < 4; i++) {
        const char *v = getenv(vars[i]);
        printf("dpa_app: env %s=%s\n", vars[i], v ? v : "(unset)");
    }
    /* the vendor's program reads its default paths: so does the fixture */
    show("/etc/cdx_cfg.xml");
    show("/etc/cdx_pcd.xml");
    show("/etc/fmc/config/hxs_pdl_v3.xml");
    show("/etc/cdx_sp.xml");
    return 0;
}
"""

FMC_CPP = r"""
#include <iostream>
#include <string>
#include <libxml/parser.h>
void *fixture_refs[] = { (void *)xmlCheckVersion };
int main(int argc, char **argv)
{
    std::string arg = argc > 1 ? argv[1] : "";
    std::cout << "fmc fixture " << (arg == "-v" ? "version 1.0" : "usage: fmc -c cfg -p pdl")
              << std::endl;
    return 0;
}
"""

MODULE_C = r"""
__attribute__((section(".modinfo"), used, aligned(1)))
static const char modinfo[] = "vermagic=" RELEASE " SMP preempt mod_unload aarch64\0"
                              "name=" NAME "\0license=GPL";
int init_module(void) { return 0; }
void cleanup_module(void) { }
"""

ASK_FILES = {
    "config/fastforward": "# fixture fastforward rules (vendor)\nport 22 = no-fastforward\n",
    "dpa_app/files/etc/cdx_cfg.xml": "<!-- fixture generic cdx_cfg -->\n<cfg/>\n",
    "dpa_app/files/etc/cdx_pcd.xml": "<!-- fixture cdx_pcd -->\n<pcd/>\n",
    "dpa_app/files/etc/cdx_sp.xml": "<!-- fixture cdx_sp -->\n<sp/>\n",
    "config/gateway-dk/cdx_cfg.xml": "<!-- fixture gateway-dk cdx_cfg -->\n<cfg board='gw'/>\n",
}
ASK_PATCHED = {"config/fastforward": "# fixture fastforward rules (patched)\nport 22 = no\n"}
FMC_FILES = {"etc/fmc/config/hxs_pdl_v3.xml": "<!-- fixture hxs_pdl_v3 -->\n<pdl/>\n"}


def _run(cmd: list[str], cwd: Path | None = None, env: dict | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed: {proc.stderr}")


def compile_programs(out: Path) -> dict[str, Path]:
    """cmm (foreground and daemon variants), dpa_app, fmc and three fake modules."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "cmm.c").write_text(CMM_C)
    (out / "dpa_app.c").write_text(DPA_APP_C)
    (out / "fmc.cpp").write_text(FMC_CPP)
    (out / "module.c").write_text(MODULE_C)
    libs = ["-Wl,--no-as-needed", "-lxml2", "-lcli", "-lpcap", "-lmnl"]
    inc = ["-I/usr/include/libxml2"]
    built = {}
    for variant, daemon in (("cmm-foreground", 0), ("cmm-daemon", 1)):
        _run([CC, "-O1", f"-DDAEMON={daemon}", *inc, "-o", str(out / variant),
              str(out / "cmm.c"), *libs])
        built[variant] = out / variant
    _run([CC, "-O1", *inc, "-o", str(out / "dpa_app"), str(out / "dpa_app.c"),
          "-Wl,--no-as-needed", "-lxml2"])
    built["dpa_app"] = out / "dpa_app"
    _run([CXX, "-O1", *inc, "-o", str(out / "fmc"), str(out / "fmc.cpp"),
          "-Wl,--no-as-needed", "-lxml2"])
    built["fmc"] = out / "fmc"
    for name in ("cdx", "fci", "auto_bridge"):
        _run([CC, "-c", f'-DRELEASE="{RELEASE}"', f'-DNAME="{name}"', "-o",
              str(out / f"{name}.ko"), str(out / "module.c")])
        built[name] = out / f"{name}.ko"
    return built


def git_env(date: str) -> dict[str, str]:
    return dict(os.environ, GIT_AUTHOR_NAME="fixture", GIT_AUTHOR_EMAIL="f@example.invalid",
                GIT_COMMITTER_NAME="fixture", GIT_COMMITTER_EMAIL="f@example.invalid",
                GIT_AUTHOR_DATE=date, GIT_COMMITTER_DATE=date, GIT_CONFIG_NOSYSTEM="1",
                HOME=os.environ.get("HOME", "/root"))


def make_tree(path: Path, files: dict[str, str], patched: dict[str, str] | None = None) -> None:
    """A work tree as fetch + patch leave it: base commit tagged askbuild/base, then a patch."""
    path.mkdir(parents=True, exist_ok=True)
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    g = ["git", "-c", "init.defaultBranch=main", "-c", "core.hooksPath=/dev/null"]
    env = git_env("2025-01-15T10:00:00Z")
    _run([*g, "init", "-q"], cwd=path, env=env)
    _run([*g, "add", "-A"], cwd=path, env=env)
    _run([*g, "commit", "-q", "-m", "fixture upstream"], cwd=path, env=env)
    _run([*g, "tag", "askbuild/base"], cwd=path, env=env)
    if patched:
        for rel, text in patched.items():
            (path / rel).write_text(text)
        env = git_env("2025-02-01T10:00:00Z")
        _run([*g, "commit", "-q", "-am", "fixture local patch"], cwd=path, env=env)


def make_staging(staging: Path, programs: dict[str, Path], cmm: str = "cmm-foreground") -> None:
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "usr/bin").mkdir(parents=True)
    for name, src in (("cmm", programs[cmm]), ("dpa_app", programs["dpa_app"]),
                      ("fmc", programs["fmc"])):
        shutil.copy2(src, staging / "usr/bin" / name)
        os.chmod(staging / "usr/bin" / name, 0o755)
    extra = staging / "lib/modules" / RELEASE / "extra"
    extra.mkdir(parents=True)
    for name in ("cdx", "fci", "auto_bridge"):
        shutil.copy2(programs[name], extra / f"{name}.ko")
        os.chmod(extra / f"{name}.ko", 0o644)


def write_manifest(work: Path, ask_commit: str) -> None:
    """A manifest shaped like the build's (docs/build.md, schema 1), plus the ASK ref."""
    manifest = {
        "schema": 1,
        "status": "success",
        "sources": {
            "ask": {"path": str(work / "src/ask"), "base": ask_commit, "ref": "fixture-1.0",
                    "patches": [{"layer": "local", "file": "0001-fixture.patch",
                                 "sha256": "0" * 64}]},
            "fmc": {"path": str(work / "src/fmc"), "patches": []},
        },
        "kernel": {"component": "kernel", "release": RELEASE},
        "components": {"cmm": {"status": "built", "artifacts": [
            {"path": "cmm", "staged": "usr/bin/cmm", "sha256": "0" * 64, "size": 1}]}},
    }
    (work / "build-manifest.json").write_text(json.dumps(manifest, indent=1))


def make_work(work: Path, programs: dict[str, Path], cmm: str = "cmm-foreground") -> None:
    """A complete work directory: src/ask, src/fmc, staging/, build-manifest.json."""
    make_tree(work / "src/ask", ASK_FILES, ASK_PATCHED)
    make_tree(work / "src/fmc", FMC_FILES)
    make_staging(work / "staging", programs, cmm)
    commit = subprocess.run(["git", "rev-parse", "askbuild/base"], cwd=work / "src/ask",
                            capture_output=True, text=True, check=True).stdout.strip()
    write_manifest(work, commit)


def shared_cache_dir() -> Path:
    """A persistent cache for the Debian base layer (keyed, so sharing it is safe)."""
    d = Path(os.environ.get("ASKBUILD_TEST_CACHE", "/tmp/askbuild-test-cache"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def settings_for(work: Path) -> Settings:
    return Settings(project_root=ROOT, work_dir=work, cache_dir=shared_cache_dir())


# -- a Docker engine for the tests ------------------------------------------------------------

class Engine:
    """A reachable Docker engine: the one already running, or a dockerd started here."""

    def __init__(self, host: str, containerd: str, proc: subprocess.Popen | None = None,
                 old_host: str | None = None):
        self.host = host
        self.containerd = containerd
        self.proc = proc
        self.old_host = old_host

    def client(self):
        import docker
        return docker.DockerClient(base_url=self.host, timeout=300)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.old_host is None:
            os.environ.pop("DOCKER_HOST", None)
        else:
            os.environ["DOCKER_HOST"] = self.old_host


def _reachable(host: str | None) -> bool:
    import docker
    try:
        c = docker.DockerClient(base_url=host, timeout=10) if host else docker.from_env(timeout=10)
        c.ping()
        c.close()
        return True
    except Exception:  # noqa: BLE001
        return False


def start_or_reuse_engine(scratch: Path) -> Engine | None:
    """Reuse the engine DOCKER_HOST (or the default socket) names; else start dockerd with vfs,
    no bridge and no iptables, its sockets under ``scratch``, and point DOCKER_HOST at it."""
    import time
    host = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if _reachable(host):
        cands = ["/var/run/docker/containerd/containerd.sock", "/run/containerd/containerd.sock"]
        sock = next((c for c in cands if Path(c).exists()), cands[0])
        return Engine(host, sock)
    if not shutil.which("dockerd"):
        return None
    scratch.mkdir(parents=True, exist_ok=True)
    sock = scratch / "docker.sock"
    log = open(scratch / "dockerd.log", "wb")  # noqa: SIM115 - lives as long as the daemon
    proc = subprocess.Popen(
        ["dockerd", "--iptables=false", "--bridge=none", "--storage-driver=vfs",
         f"--data-root={scratch / 'data'}", f"--exec-root={scratch / 'x'}",
         f"--pidfile={scratch / 'docker.pid'}", "-H", f"unix://{sock}"],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"unix://{sock}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dockerd exited: see {scratch / 'dockerd.log'}")
        if sock.exists() and _reachable(url):
            old = os.environ.get("DOCKER_HOST")
            os.environ["DOCKER_HOST"] = url
            return Engine(url, str(scratch / "x/containerd/containerd.sock"), proc, old)
        time.sleep(0.5)
    proc.terminate()
    raise RuntimeError(f"dockerd did not answer within 90 s: see {scratch / 'dockerd.log'}")


def programs_dict(progdir: Path) -> dict[str, Path]:
    out = {k: progdir / k for k in ("cmm-foreground", "cmm-daemon", "dpa_app", "fmc")}
    out.update({k: progdir / f"{k}.ko" for k in ("cdx", "fci", "auto_bridge")})
    return out
