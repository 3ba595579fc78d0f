"""The patch queue: layered patch series applied as one git commit per patch.

The verbs: :func:`patch` (``inv patch``), :func:`edit` (``inv patches.edit``), :func:`export`
(``inv patches.export``); the build asks :func:`patch_state_problems` and :func:`tree_state`;
the rebase (:mod:`askbuild.rebasing`) reuses the pieces below.  One module per concern, each
importing only the ones above it in this list:

* :mod:`.worktree`: read-only git queries of a work tree; git failures as
  :class:`~askbuild.errors.PatchFailed` messages (:func:`git_errors`, :class:`NoSpaceLeft`).
* :mod:`.layers`: which series apply to which source (``recipes/patches.toml``): :class:`Layer`,
  :func:`load_layers`, :func:`resolve_layer`.
* :mod:`.inputs`: every patch of a source's layers with its bytes (:func:`collect_inputs`),
  how a vendor layer selects its patches, competing patches.
* :mod:`.record`: the patch record ``state/patch-<name>.json`` and when it vouches for a tree.
* :mod:`.journal`: crash safety: the run journal, :func:`recover_tree`, scratch work trees.
* :mod:`.reflog`: the commits a ``git am`` made, read from HEAD's reflog (no process).
* :mod:`.apply`: one patch as commit(s) (:func:`apply_patch`), a run of mails with one
  ``git am`` (:func:`~.apply.apply_run`), a whole queue (:func:`apply_queue`).
* :mod:`.style`: a patch file's own format (mail headers, diffstat, index abbreviation,
  signature; plain diffs), so a re-written patch looks like the one it replaces.
* :mod:`.write`: commits back as a series directory, all or nothing (:func:`write_series`).
* :mod:`.patching`: the ``inv patch`` verb (:func:`patch`, :func:`patch_source`).
* :mod:`.state`: is a work tree exactly the current series on the current lock?
* :mod:`.edit`, :mod:`.export`: the ``inv patches.edit`` / ``inv patches.export`` verbs.

Paths come from :class:`~askbuild.settings.Settings` (``patch_record``, ``failed_patch_record``,
``edit_record``, ``series_pending``), ref names from :mod:`askbuild.refs`.
"""

from .apply import PATCH_COLUMNS, apply_patch, apply_queue, touched_paths
from .edit import edit, unexported_edits
from .export import export
from .graft import grafted_queue
from .inputs import (
    PatchFiles,
    PatchInput,
    collect_inputs,
    competing,
    patch_files,
    source_tree,
)
from .journal import JOURNAL, clear_stale_locks, journalled, recover_tree
from .layers import Layer, edit_branch, layers_file, load_layers, resolve_layer
from .patching import patch, patch_source
from .record import one_check_per_run, record_matches, tree_state
from .scratch import (
    ScratchHome,
    clean_scratch,
    in_scratch_home,
    ram_problem,
    scratch_home,
    scratch_worktree,
    sparse_pays,
    use_sparse_index,
)
from .state import patch_state_problem, patch_state_problems
from .worktree import REPRO, NoSpaceLeft, base_commit, git_dir, git_errors
from .write import finish_pending_series, format_patch, write_series

__all__ = [
    "JOURNAL", "PATCH_COLUMNS", "REPRO", "Layer", "NoSpaceLeft", "PatchFiles", "PatchInput",
    "ScratchHome",
    "apply_patch", "apply_queue", "base_commit", "clean_scratch",
    "clear_stale_locks", "collect_inputs", "competing", "edit", "edit_branch", "export",
    "finish_pending_series", "format_patch", "git_dir", "git_errors", "grafted_queue",
    "journalled", "layers_file", "in_scratch_home", "ram_problem",
    "scratch_home",
    "load_layers", "one_check_per_run", "patch", "patch_files", "patch_source",
    "patch_state_problem", "patch_state_problems",
    "record_matches", "recover_tree", "resolve_layer", "scratch_worktree", "source_tree",
    "sparse_pays", "touched_paths",
    "tree_state", "unexported_edits", "use_sparse_index", "write_series",
]
