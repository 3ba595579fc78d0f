"""One GNU make jobserver for the whole build: every make shares the budget job by job, a
component gives its token back however it ends, and ready components start by expected cost.

Real make, real pipes: the steps record what they see (MAKEFLAGS, the tokens left in the pipe,
the start and end of each make job) and the tests read those records."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from buildfixtures import commit_all, shell_project

from askbuild import building, recipes
from askbuild.building.jobserver import JobServer, strip_jobs
from askbuild.errors import BuildFailed

#: A makefile of $(N) jobs that each append "start/end TAG<i> <time>" to $(TL), sleeping $(T).
JOBS_MK = textwrap.dedent("""\
    JOBS := $(shell seq 1 $(N))
    all: $(addprefix job,$(JOBS))
    \techo built > out.txt
    job%:
    \techo start $(TAG)$* $$(date +%s.%N) >> $(TL); sleep $(T); \\
    \t  echo end $(TAG)$* $$(date +%s.%N) >> $(TL)
    .PHONY: all
    """)

#: Counts the tokens in the jobserver pipe named by MAKEFLAGS (read out without blocking, then
#: written back), and writes {"makeflags", "tokens"} to out.txt.
COUNT_PY = textwrap.dedent("""\
    import json, os, re
    flags = os.environ.get("MAKEFLAGS", "")
    m = re.search(r"--jobserver-auth=(\\d+),(\\d+)", flags)
    tokens = None
    if m:
        r, w = int(m.group(1)), int(m.group(2))
        fd = os.open(f"/proc/self/fd/{r}", os.O_RDONLY | os.O_NONBLOCK)
        got = b""
        while True:
            try:
                chunk = os.read(fd, 64)
            except BlockingIOError:
                break
            if not chunk:
                break
            got += chunk
        os.write(w, got)
        tokens = len(got)
    json.dump({"makeflags": flags, "tokens": tokens}, open("out.txt", "w"))
    """)


def _recipe(steps: list[list[str]], *, depends=(), parallel=True) -> str:
    return textwrap.dedent(f"""\
        source = "s"
        depends = {json.dumps(list(depends))}
        parallel = {"true" if parallel else "false"}
        steps = {json.dumps(steps)}
        [[artifacts]]
        path = "out.txt"
        """)


def _sleep(seconds: float, *, fail: bool = False) -> list[list[str]]:
    tail = "exit 3" if fail else "echo built > out.txt"
    return [["sh", "-c", f"sleep {seconds}; {tail}"]]


def _jobs(name: str, n: int, t: float, tl: Path) -> list[list[str]]:
    return [["make", "-j{jobs}", "-f", "jobs.mk", f"N={n}", f"T={t}", f"TAG={name}",
             f"TL={tl}"]]


def _project(tmp_path: Path, recipes: dict[str, str], jobs: int):
    s = shell_project(tmp_path, recipes, jobs=jobs)
    src = s.src_dir / "s"
    (src / "jobs.mk").write_text(JOBS_MK)
    (src / "count.py").write_text(COUNT_PY)
    commit_all(src, "jobserver fixtures")
    return s


def _spans(tl: Path, prefix: str) -> list[tuple[float, float]]:
    ev: dict[str, dict[str, float]] = {}
    for line in tl.read_text().splitlines():
        what, name, t = line.split()
        if name.startswith(prefix):
            ev.setdefault(name, {})[what] = float(t)
    return [(e["start"], e["end"]) for e in ev.values()]


def _max_concurrent(spans: list[tuple[float, float]], lo: float = 0.0,
                    hi: float = float("inf")) -> int:
    """The most jobs of ``spans`` running at once within [lo, hi]."""
    points = sorted({s for s, _ in spans} | {lo})
    best = 0
    for p in points:
        if lo <= p <= hi:
            best = max(best, sum(1 for s, e in spans if s <= p < e))
    return best


def test_a_make_alone_uses_the_whole_budget_and_no_more(tmp_path):
    tl = tmp_path / "timeline"
    s = _project(tmp_path, {"big": _recipe(_jobs("big", 6, 0.4, tl))}, jobs=3)
    building.build(s, [], prepare=False)
    spans = _spans(tl, "big")
    assert len(spans) == 6
    # -j{jobs} was dropped: the jobserver of 3 decides, so 3 jobs ran at once, never more.
    assert _max_concurrent(spans) == 3
    log = s.log_file("big").read_text()
    assert "--jobserver-auth=" in log and "dropped: make takes its jobs from the build's " \
        "jobserver" in log


def test_the_budget_moves_to_a_running_make_when_another_component_ends(tmp_path):
    tl = tmp_path / "timeline"
    s = _project(tmp_path, {
        "big": _recipe(_jobs("big", 9, 0.4, tl)),
        "other": _recipe([["sh", "-c", f"echo start other $(date +%s.%N) >> {tl}; sleep 1.2; "
                           f"echo end other $(date +%s.%N) >> {tl}; echo built > out.txt"]]),
    }, jobs=3)
    building.build(s, [], prepare=False)
    (o_start, o_end), = _spans(tl, "other")
    big = _spans(tl, "big")
    # While "other" holds its token, big's make gets the two others; once it ended, all three.
    assert _max_concurrent(big, o_start, o_end - 0.05) <= 2
    assert _max_concurrent(big, o_end, float("inf")) == 3


def test_a_failing_component_gives_its_token_back(tmp_path):
    """keep_going: "bad" fails while "slow" still runs; "count" (after "gate") then finds the
    budget intact: of 3 tokens, "slow" and "count" hold one each, so one is in the pipe (none if
    the failed component had kept its token).  Nothing is idle in between, so the count is not
    the scheduler's clean-up of an idle pipe."""
    s = _project(tmp_path, {
        "bad": _recipe(_sleep(0.2, fail=True)),
        "slow": _recipe(_sleep(3.0)),
        "gate": _recipe(_sleep(1.0)),
        "count": _recipe([["python3", "count.py"]], depends=["gate"]),
    }, jobs=3)
    with pytest.raises(BuildFailed):
        building.build(s, [], keep_going=True, prepare=False)
    seen = json.loads((s.out_dir / "count/src/out.txt").read_text())
    assert "-j3 --jobserver-auth=" in seen["makeflags"]
    assert seen["tokens"] == 1


def test_a_not_parallel_component_runs_make_without_the_jobserver(tmp_path):
    tl = tmp_path / "timeline"
    s = _project(tmp_path, {"serial": _recipe(_jobs("serial", 3, 0.2, tl), parallel=False),
                            "count": _recipe([["python3", "count.py"]], parallel=False)},
                 jobs=3)
    building.build(s, [], prepare=False)
    assert _max_concurrent(_spans(tl, "serial")) == 1
    seen = json.loads((s.out_dir / "count/src/out.txt").read_text())
    assert seen == {"makeflags": "", "tokens": None}


def test_ready_components_start_by_the_previous_build_s_durations(tmp_path):
    tl = tmp_path / "timeline"

    def timed(name: str, seconds: float) -> str:
        return _recipe([["sh", "-c", f"echo start {name} $(date +%s.%N) >> {tl}; "
                         f"sleep {seconds}; echo end {name} $(date +%s.%N) >> {tl}; "
                         "echo built > out.txt"]])

    s = _project(tmp_path, {"a": timed("a", 0.1), "z": timed("z", 0.1)}, jobs=1)
    cold_first, cold_second = recipes.load(s).order()
    # The component that starts second on a cold build (equal costs: recipe order) is the
    # slow one: next time it starts first.
    (s.project_root / "recipes/components" / f"{cold_second}.toml").write_text(
        timed(cold_second, 0.8))
    building.build(s, [], prepare=False)
    first = {n: _spans(tl, n)[0][0] for n in "az"}
    assert first[cold_first] < first[cold_second]
    tl.unlink()
    src = s.src_dir / "s"
    (src / "input.txt").write_text("changed\n")   # every key changes
    commit_all(src, "edit")
    building.build(s, [], prepare=False)
    second = {n: _spans(tl, n)[0][0] for n in "az"}
    assert second[cold_second] < second[cold_first]


def test_strip_jobs_only_touches_make_job_options():
    assert strip_jobs(["make", "-C", "x", "-j4", "all"]) == (["make", "-C", "x", "all"], ["-j4"])
    assert strip_jobs(["/usr/bin/make", "-j", "8", "--jobs=2", "--jobs", "3", "-j"]) == \
        (["/usr/bin/make"], ["-j", "8", "--jobs=2", "--jobs", "3", "-j"])
    assert strip_jobs(["ninja", "-j4"]) == (["ninja", "-j4"], [])
    assert strip_jobs(["make", "-jfoo"]) == (["make", "-jfoo"], [])


def test_reconcile_restores_tokens_a_killed_make_took():
    with JobServer(4) as js:
        assert js.available() == 4
        held = [js.acquire() for _ in range(4)]
        assert None not in held and js.acquire() is None
        js.release(held[1])
        assert js.available() == 1
        assert js.reconcile() == 2            # 3 pipe tokens, one back, two never returned
        assert js.available() == 4
        js.release(js.acquire())              # the implicit token, given back to the pipe
        assert js.acquire() is not None and js.available() == 3
