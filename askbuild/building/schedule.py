"""Running the plan: components as a DAG (``graphlib`` + a thread pool) within the job budget.

A component whose dependencies failed is skipped, one that cannot start fails alone, one whose
key is unchanged with its artifacts in place is ``cached`` at once (its staged files put back if
they went missing); the others are built by :class:`~askbuild.building.component.Components`.
Without ``keep_going`` the first failure stops every running step and cancels the rest.

The budget is one GNU make jobserver (:mod:`.jobserver`): a component starts when it gets a
token and gives it back however it ends; its makes take the other free tokens job by job.  Of the
ready components the one with the longest expected path to the end of the build starts first
(:func:`expected_costs`: the durations of the previous build, a kernel first on a cold build).
With a shared build cache the downloads of the components this run may have to make start with
the run, in that order (:mod:`.prefetch`).
"""

from __future__ import annotations

import concurrent.futures as cf
import graphlib
import select
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .. import console, manifest
from ..errors import AskbuildError, BuildFailed, os_error_message
from ..settings import Settings
from .component import Components
from .jobserver import JobServer
from .keys import Plan
from .prefetch import Prefetch
from .records import read_record, restage, trusted_record, up_to_date
from .runner import Cancelled, Steps

if TYPE_CHECKING:
    from .remote import RemoteCache

#: Expected seconds of a component never built before: a kernel dwarfs everything else.
COLD_COST = {"kernel": 3600.0, "make": 10.0}
#: How often the scheduler looks for a free token while components wait for one.
TOKEN_POLL_S = 0.05

STATES = ("pending", "running", "built", "cached", "failed", "skipped", "cancelled")


def _seconds(value: object) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
    return float(value) if ok else None


def expected_costs(settings: Settings, plan: Plan) -> dict[str, float]:
    """{component: expected seconds from its start to the end of the build along its longest
    chain of dependents}: its own duration last time (its done record, else the manifest,
    else :data:`COLD_COST`) plus the longest such chain after it."""
    previous = (manifest.read(settings) or {}).get("components")
    previous = previous if isinstance(previous, dict) else {}
    own: dict[str, float] = {}
    for n in plan.names:
        last = previous.get(n)
        own[n] = (_seconds((read_record(settings, n) or {}).get("duration_s"))
                  or _seconds(last.get("duration_s") if isinstance(last, dict) else None)
                  or COLD_COST.get(plan.rs.recipes[n].kind, COLD_COST["make"]))
    chain: dict[str, float] = {}
    for n in reversed(plan.names):         # dependents come after their dependencies
        after = [chain[m] for m in plan.names if m in chain and n in plan.rs.recipes[m].depends]
        chain[n] = own[n] + max(after, default=0.0)
    return chain


def describe(error: Exception) -> str:
    """The one-line message of any error a component can end with."""
    if isinstance(error, AskbuildError):
        return error.message
    if isinstance(error, OSError):
        return os_error_message(error)[0]
    return f"{type(error).__name__}: {error}"


class Reporter:
    """Component states on screen: a rich Live table on a terminal, plain lines otherwise."""

    def __init__(self, names: list[str]) -> None:
        self.names = names
        self.state = {n: "pending" for n in names}
        self.start: dict[str, float] = {}
        self.end: dict[str, float] = {}
        self.live = None
        self.interactive = console.is_interactive()
        self.lock = threading.Lock()

    def __enter__(self) -> Reporter:
        if self.interactive:
            from rich.live import Live
            self.live = Live(self._table(), console=console.get_console(),
                             refresh_per_second=4, transient=False,
                             get_renderable=self._table)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live:
            self.live.__exit__(*exc)

    def _elapsed(self, n: str) -> str:
        if n not in self.start:
            return ""
        end = self.end.get(n, time.monotonic())
        return f"{end - self.start[n]:.1f}s"

    def _table(self):
        from rich.table import Table
        colours = {"running": "cyan", "built": "green", "cached": "dim green",
                   "failed": "bold red", "skipped": "yellow", "cancelled": "yellow"}
        t = Table(title="askbuild build", show_edge=False)
        t.add_column("component")
        t.add_column("state")
        t.add_column("elapsed", justify="right")
        with self.lock:
            for n in self.names:
                st = self.state[n]
                c = colours.get(st)
                t.add_row(n, f"[{c}]{st}[/]" if c else st, self._elapsed(n))
        return t

    def set(self, name: str, state: str, detail: str = "") -> None:
        with self.lock:
            self.state[name] = state
            now = time.monotonic()
            if state == "running":
                self.start[name] = now
            elif state in ("built", "failed", "cached"):
                self.start.setdefault(name, now)
                self.end[name] = now
        if not self.interactive:
            el = self._elapsed(name) if state in ("built", "failed") else ""
            extra = " ".join(x for x in (el and f"({el})", detail) if x)
            console.info(f"build {name}: {state}{(' ' + extra) if extra else ''}")


class Build:
    """One run of the plan.  ``results``: {component: {"status": one of :data:`STATES`, and
    "record" (built/cached), "error" + "failure" (the exception) + "log" (failed), "reason"
    (skipped/cancelled), "jobs"}}."""

    def __init__(self, settings: Settings, plan: Plan, *, keep_going: bool,
                 ccache_bin: Path | None, remote: RemoteCache | None = None) -> None:
        self.settings = settings
        self.remote = remote
        self.plan = plan
        self.rs = plan.rs
        self.keep_going = keep_going
        self.steps = Steps()
        self.components = Components(settings, plan, self.steps, ccache_bin)
        self.results: dict[str, dict] = {n: {"status": "pending"} for n in plan.names}
        self.cost = expected_costs(settings, plan)
        self.order = {n: i for i, n in enumerate(plan.names)}
        self.jobserver: JobServer | None = None
        self.prefetch: Prefetch | None = None

    def stop(self) -> None:
        """Start nothing new and stop every running step (:meth:`Steps.stop`)."""
        self.steps.stop()

    def status(self, n: str) -> str:
        return self.results[n]["status"]

    def with_status(self, *states: str) -> list[str]:
        """This run's components (in order) whose status is one of ``states``."""
        return [n for n in self.plan.names if self.status(n) in states]

    def run(self, rep: Reporter) -> None:
        """Run the plan.  On any exception in this (the main) thread -- KeyboardInterrupt,
        :class:`askbuild.cli.Terminated` -- every running step is stopped at once and the
        exception goes on without waiting for the workers (``with ThreadPoolExecutor`` would
        wait for them first)."""
        pool = cf.ThreadPoolExecutor(max_workers=max(1, self.settings.jobs),
                                     thread_name_prefix="askbuild-build")
        self.jobserver = self.components.jobserver = JobServer(self.settings.jobs)
        try:
            self.prefetch = self._prefetch()
            self._schedule(pool, rep)
        except BaseException:
            self.stop()
            pool.shutdown(wait=False, cancel_futures=True)
            self.jobserver.close()
            if self.prefetch is not None:
                self.prefetch.close(wait=False)
            raise
        pool.shutdown(wait=True)
        self.jobserver.close()
        if self.prefetch is not None:
            self.prefetch.close(wait=not self.steps.cancel.is_set())

    def _prefetch(self) -> Prefetch | None:
        """With a shared build cache, the downloads of every component this run may have to
        make (not blocked, not up to date), started now, the longest chain first
        (:mod:`.prefetch`)."""
        if self.remote is None or self.remote.down is not None:
            return None
        wanted = [(n, self.plan.keys[n]) for n in
                  sorted(self.plan.names, key=lambda n: (-self.cost[n], self.order[n]))
                  if n not in self.plan.blocked and n in self.plan.keys
                  and not up_to_date(trusted_record(self.settings, n), self.plan.keys[n])]
        return Prefetch(self.remote, wanted) if wanted else None

    # -- outcomes ---------------------------------------------------------------------
    def _fail(self, n: str, rep: Reporter, error: Exception, *, log: Path | None) -> None:
        """Component ``n`` failed with ``error`` (kept: the final error is made of them)."""
        message = describe(error)
        self.results[n].update(status="failed", error=message, failure=error,
                               log=str(log) if log else None)
        rep.set(n, "failed", message)
        if not self.keep_going:
            self.stop()

    def _finished(self, n: str, fut: cf.Future, rep: Reporter) -> None:
        """Record the outcome of component ``n``'s future."""
        res = self.results[n]
        try:
            rec = fut.result()
        except Cancelled:
            res.update(status="cancelled", reason="stopped by an earlier failure")
            rep.set(n, "cancelled")
        except Exception as e:  # noqa: BLE001 - any error fails this step; the message says
            self._fail(n, rep, e, log=self.settings.log_file(n))
        else:
            origin = rec.get("origin") or {}
            if origin.get("kind") == "remote":     # nothing compiled; its files just staged
                res.update(status="cached", record=rec, origin="remote", restaged=True,
                           remote={"location": origin["remote"], "digest": origin["digest"]})
                rep.set(n, "cached", f"from {origin['remote']} ({origin['digest'][:19]})")
            else:
                res.update(status="built", record=rec, origin="built")
                rep.set(n, "built")

    def _settle(self, n: str, rep: Reporter) -> bool:
        """Decide ``n`` without running anything if possible (True when decided)."""
        res = self.results[n]
        bad = [d for d in self.rs.recipes[n].depends
               if self.results.get(d, {}).get("status") in ("failed", "skipped", "cancelled")]
        if bad:
            res.update(status="skipped", reason=f"dependency {', '.join(bad)} did not build")
            rep.set(n, "skipped", res["reason"])
            return True
        if n in self.plan.blocked:        # its inputs are missing: it fails alone
            self._fail(n, rep, self.plan.blocked[n], log=None)
            return True
        if self.steps.cancel.is_set():
            res.update(status="cancelled", reason="an earlier failure stopped the build "
                       "(use --keep-going to build the rest)")
            rep.set(n, "cancelled")
            return True
        rec = trusted_record(self.settings, n)
        if up_to_date(rec, self.plan.keys[n]):
            res.update(status="cached", record=rec, restaged=restage(self.settings, rec),
                       origin="cached")
            rep.set(n, "cached")
            return True
        return False

    def _task(self, name: str, jobs: int, token: bytes, rep: Reporter) -> dict:
        """Build ``name`` holding ``token``, given back however the component ends: from the
        shared build cache when it holds the key (:meth:`_from_remote`), else locally."""
        try:
            rep.set(name, "running", "(jobserver)" if self.rs.recipes[name].parallel
                    else "(-j1)")
            rec = self._from_remote(name, jobs)
            return rec if rec is not None else self.components.build(name, jobs)
        finally:
            self.jobserver.release(token)

    def _from_remote(self, name: str, jobs: int) -> dict | None:
        """``name`` installed from the shared build cache (its done record), or None: no
        remote, not there, refused (a warning said why) or not installable."""
        if self.remote is None:
            return None
        from .remote import Unusable  # (only with a remote cache)
        key = self.plan.keys[name]
        pulled = self.prefetch.take(name, key) if self.prefetch is not None else \
            self.remote.take(name, key)
        if pulled is None:
            return None
        try:
            return self.components.take(name, jobs, pulled)
        except (Unusable, AskbuildError, OSError) as e:
            why = str(e) if isinstance(e, Unusable) else describe(e)
            console.warn(f"could not install {name} from {pulled.location}: {why}; "
                         f"building {name} locally")
            return None

    # -- the DAG ----------------------------------------------------------------------
    def _share(self, n: str, running: int, waiting: int) -> int:
        """Component ``n``'s share of the job budget (1 unless its recipe is parallel)."""
        budget = max(1, self.settings.jobs)
        if not self.rs.recipes[n].parallel:
            return 1
        return max(1, budget // max(1, min(budget, running + 1 + waiting)))

    def _schedule(self, pool: cf.ThreadPoolExecutor, rep: Reporter) -> None:
        """Until every component is decided: settle what needs no work, start what is ready
        within the budget, wait for one to finish."""
        wanted = set(self.plan.names)
        ts = graphlib.TopologicalSorter({n: [d for d in self.rs.recipes[n].depends
                                             if d in wanted] for n in self.plan.names})
        ts.prepare()
        ready: list[str] = []
        futures: dict[cf.Future, str] = {}
        idle_rounds = 0
        while ts.is_active():
            if not futures:             # no make runs: every token is back (or was lost)
                self.jobserver.reconcile()
            progressed = self._settle_ready(ts, ready, rep)
            progressed = self._start_ready(ts, ready, futures, pool, rep) or progressed
            if not futures:
                idle_rounds = 0 if progressed else idle_rounds + 1
                if idle_rounds > 2:  # nothing runs, nothing can start: cannot happen
                    raise BuildFailed("build scheduler stalled (internal error)")
                continue
            done = self._wait(futures, waiting=bool(ready))
            for fut in done:
                n = futures.pop(fut)
                self._finished(n, fut, rep)
                ts.done(n)

    def _wait(self, futures: dict[cf.Future, str], *, waiting: bool) -> set[cf.Future]:
        """The finished futures once one finished, or (when components wait for a token)
        as soon as a token may be free."""
        if not waiting:
            return cf.wait(futures, return_when=cf.FIRST_COMPLETED)[0]
        done = {f for f in futures if f.done()}
        if not done:
            select.select([self.jobserver.wait_fd], [], [], TOKEN_POLL_S)
            done = {f for f in futures if f.done()}
        return done

    def _settle_ready(self, ts: graphlib.TopologicalSorter, ready: list[str],
                      rep: Reporter) -> bool:
        """Settle every ready component that needs no work (skipped, cancelled, up to date;
        settling may make more ready); queue the others in ``ready``.  True if any settled."""
        progressed = False
        while new := ts.get_ready():
            for n in new:
                if self._settle(n, rep):
                    ts.done(n)
                    progressed = True
                else:
                    ready.append(n)
        return progressed

    def _start_ready(self, ts: graphlib.TopologicalSorter, ready: list[str],
                     futures: dict[cf.Future, str], pool: cf.ThreadPoolExecutor,
                     rep: Reporter) -> bool:
        """Start queued components, the most expensive chain first, while a jobserver token
        is free (each running component holds one).  True if any was started (or settled
        because the build is stopping)."""
        progressed = False
        ready.sort(key=lambda n: (-self.cost[n], self.order[n]))
        while ready:
            if self.steps.cancel.is_set():
                n = ready.pop(0)
                self._settle(n, rep)
                ts.done(n)
                progressed = True
                continue
            token = self.jobserver.acquire()
            if token is None:
                break
            n = ready.pop(0)
            progressed = True
            share = self._share(n, len(futures), len(ready))
            self.results[n].update(status="running", jobs=share, started=manifest.now())
            futures[pool.submit(self._task, n, share, token, rep)] = n
        return progressed
