"""Downloads from the shared build cache, started ahead of the DAG.

With a shared build cache (``--cache-remote``), each component the build may have to make
(not blocked, not up to date here) is looked up and downloaded as soon as the build starts,
:data:`WORKERS` at a time, the longest expected chain first (the scheduler's own order), while
the DAG goes on.  A component no longer waits for its dependencies to be installed before its
download even starts: on a machine that takes everything from the cache, the downloads of a
chain of three overlap instead of following each other.

Only the download runs ahead.  The artifact stays on disk (its scratch layout, never in
memory) until the component's turn comes (its dependencies done, a jobserver token held);
then it is verified and installed as before (:meth:`.remote.RemoteCache.verify`), or, when the
cache does not hold it, the component is built.  A download nobody takes (a dependency failed,
the build stopped) is removed when the build ends; one a killed run left is removed by the
next run (:meth:`.remote.RemoteCache._scratch`).
"""

from __future__ import annotations

import concurrent.futures as cf
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .remote import Layout, Pulled, RemoteCache

#: Downloads at once: each is a skopeo process, mostly waiting on the network.
WORKERS = 3


def _discard(fut: cf.Future) -> None:
    """Remove the scratch of a finished download nobody took."""
    if not fut.cancelled() and fut.exception() is None and fut.result() is not None:
        fut.result().discard()


class Prefetch:
    """The downloads of ``wanted`` ([(component, key)], in the order to start them)."""

    def __init__(self, remote: RemoteCache, wanted: list[tuple[str, str]],
                 workers: int = WORKERS) -> None:
        self.remote = remote
        self.keys = dict(wanted)
        self.closed = False
        self.pool = cf.ThreadPoolExecutor(max_workers=max(1, min(workers, len(wanted))),
                                          thread_name_prefix="askbuild-prefetch")
        self.futures: dict[str, cf.Future[Layout | None]] = {
            name: self.pool.submit(remote.download, name, key) for name, key in wanted}

    def take(self, name: str, key: str) -> Pulled | None:
        """What :meth:`.remote.RemoteCache.take` answers for ``name``/``key``, from the
        download started ahead (waiting for it to finish) when there is one; None once
        closed (the build is stopping: nothing new is downloaded)."""
        if self.closed:
            return None
        fut = self.futures.pop(name, None)
        if fut is None or self.keys.get(name) != key:
            if fut is not None:
                fut.add_done_callback(_discard)
            return self.remote.take(name, key)
        try:
            done = fut.result()
        except cf.CancelledError:           # (closed meanwhile)
            return None
        return self.remote.verify(done, name, key)

    def close(self, *, wait: bool) -> None:
        """Start nothing more; remove the downloads nobody took (``wait``: after the running
        ones finished; else each as it finishes)."""
        self.closed = True
        self.pool.shutdown(wait=wait, cancel_futures=True)
        for fut in self.futures.values():
            fut.add_done_callback(_discard)    # (runs at once for a finished one)
        self.futures.clear()
