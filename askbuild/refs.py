"""The git ref names askbuild writes in work trees and cache repositories (their one owner).

Work tree of a source (``Settings.source_tree``):

* ``askbuild/base`` (lightweight tag): the base commit, i.e. the locked upstream commit or the
  tarball import commit; written by fetch only.
* ``askbuild/patched`` (branch): one commit per patch of the series, from the base; moved by
  ``inv patch`` only when every patch applied.
* ``askbuild/edit/<layer>`` (branches): ``inv patches.edit`` of one layer.
* ``askbuild/rebase`` (branch): ``inv rebase`` in progress.

Cache repository (``Settings.git_cache_repo``):

* ``refs/askbuild/keep/<sha>``: keeps every pinned commit reachable, so the cache never
  forgets a pin.
* ``refs/askbuild/seen/<ref>``: what the tag or branch ``<ref>`` (as the user or the sources
  file named it) pointed at upstream when askbuild last resolved it online, so ``--offline``
  can resolve it again (``fetching.fetch_ref``).
* ``refs/askbuild/upstream/heads/*``, ``refs/askbuild/upstream/tags/*``: every branch and tag
  of upstream, with history, as of the last fetch that needed them all (finding the commit of
  an abbreviated SHA); also read by ``--offline``.
"""

BASE_TAG = "askbuild/base"
BASE_REF = f"refs/tags/{BASE_TAG}"
PATCHED = "askbuild/patched"
EDIT_PREFIX = "askbuild/edit/"
REBASE_BRANCH = "askbuild/rebase"
KEEP_PREFIX = "refs/askbuild/keep/"
SEEN_PREFIX = "refs/askbuild/seen/"
UPSTREAM_PREFIX = "refs/askbuild/upstream/"
