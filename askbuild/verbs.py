"""The verbs as data, runnable with or without Invoke.

``tasks.py`` defines each verb as a thin function ``def name(c, <own options>)`` that returns
the engine call as a function of the ``Settings``; :func:`verb` turns it into a
:class:`VerbSpec`: its own options with their defaults, the common options it takes (names of
:data:`COMMON`), help, iterable and positional options, and the body.  A :class:`Verbs` table
gives each spec its dotted name (``image.test``) and is the one source of both entry points:

* ``inv`` (Invoke's binary): ``Verbs.collection()`` builds the Invoke tasks and the
  ``Collection`` (same ``inv --list``, ``inv --help VERB``, options and short flags as a
  plain ``@task`` of the same signature would give);
* ``askbuild`` / ``python -m askbuild`` (:mod:`askbuild.__main__`): parses the argv of one
  known verb itself and calls :meth:`VerbSpec.run`, without importing Invoke.

Both run the body under :func:`askbuild.cli.main` (same settings, messages, exit codes).
Nothing here imports Invoke or an engine module at import time.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from typing import Any

# name -> (default, help): the options that become Settings (see askbuild/settings.py)
COMMON = {
    "profile": ("", "sources profile: 'default' (recipes/sources.toml) or a recipes/profiles/ "
                    "name"),
    "offline": (False, "never touch the network: the download cache, and file:// mirrors of "
                       "locked sources"),
    "locked": (False, "refuse to resolve unlocked sources (CI): every source needs a lock entry"),
    "work_dir": ("", "work directory (default: ./build or ASKBUILD_WORK_DIR)"),
    "cache_dir": ("", "shared download cache (default: the user cache dir or ASKBUILD_CACHE_DIR)"),
    "cross_compile": ("", "cross toolchain prefix (default: CROSS_COMPILE, the config's "
                          "cross_compile, or aarch64-linux-gnu-)"),
    "jobs": ("", "job budget shared by parallel components (default: nproc)"),
    "debug": (False, "show tracebacks behind error messages"),
    # beyond this machine (docs/fleet.md); verbs that use them name them in @verb(common=...)
    "cache_remote": ("", "shared build cache oci://HOST[:PORT]/REPO (default: ASKBUILD_CACHE_REMOTE"
                         " or [cache] remote)"),
    "cache_push": (False, "upload what this run builds to the shared build cache"),
    "ccache_remote": ("", "ccache remote storage, e.g. redis://HOST:6379 (default: "
                          "ASKBUILD_CCACHE_REMOTE or [ccache] remote)"),
    "insecure": ("", "registry HOST[:PORT] allowed over plain HTTP (comma-separated; "
                     "127.0.0.1 and localhost always are)"),
}
SOURCES = ("profile", "offline", "locked", "work_dir", "cache_dir", "cross_compile", "debug")
HELP_WORDS = ("--help", "-h")


class _Empty:
    """The default of a parameter that has none (``inspect.Parameter.empty``'s part here)."""

    def __repr__(self) -> str:
        return "EMPTY"


EMPTY = _Empty()


def own_parameters(body: Callable) -> dict[str, Any]:
    """The parameters of the plain function ``body`` after its first (the context), in
    order, each with its default (:data:`EMPTY`: none): what ``inspect.signature`` says of
    them, read from the code object (``inspect`` costs some 5 ms of every verb's start)."""
    if not isinstance(body, type(own_parameters)):
        raise TypeError(f"verb {body!r}: a verb is a plain function")
    code = body.__code__
    if code.co_flags & 0x0C:        # CO_VARARGS | CO_VARKEYWORDS
        raise TypeError(f"verb {body.__name__}: no *args / **kwargs in a verb's signature")
    names = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
    positional = names[:code.co_argcount]
    defaults = dict(zip(positional[len(positional) - len(body.__defaults__ or ()):],
                        body.__defaults__ or (), strict=True))
    defaults.update(body.__kwdefaults__ or {})
    return {n: defaults.get(n, EMPTY) for n in names[1:]}


class VerbSpec:
    """One verb: ``body(c, **own)`` returns ``Callable[[Settings], Any]``; ``common`` names the
    :data:`COMMON` options it also takes.  ``name`` (dotted) is set by :class:`Verbs`."""

    def __init__(self, body: Callable, common: tuple[str, ...], help: dict[str, str],
                 task_kw: dict[str, Any]) -> None:
        self.body = body
        self.common = tuple(common)
        self.help = dict(help)
        self.task_kw = dict(task_kw)
        self.name = body.__name__
        self.table: Verbs | None = None
        self.memo = False                   # see verb()
        self.__doc__ = body.__doc__
        # Invoke's rules (invoke.tasks.Task): the first parameter is the context; positional =
        # the ``positional=`` given, else every parameter without a default
        self.own = own_parameters(body)
        self.extra = {n: COMMON[n][0] for n in self.common if n not in self.own}
        given = task_kw.get("positional")
        self.positional = tuple(given if given is not None else
                                [n for n, d in self.own.items() if d is EMPTY])
        self.iterable = tuple(task_kw.get("iterable") or ())

    def __repr__(self) -> str:
        return f"<verb {self.name}>"

    @property
    def parameters(self) -> dict[str, Any]:
        """Every option (own, then common) -> its default, in the order of the signature."""
        return {**self.own, **self.extra}

    def defaults(self) -> dict[str, Any]:
        """The keyword arguments when no option is given, as Invoke passes them (an iterable
        option: ``[]``; a positional: ``None``)."""
        out = {}
        for n, d in self.parameters.items():
            if n in self.iterable and d is None:
                d = []
            out[n] = None if d is EMPTY else d
        return out

    def run(self, c: Any = None, *args: Any, **kwargs: Any) -> Any:
        """Run the verb: split the common options off, call the body, run its engine call
        under ``cli.main`` with the settings those options give."""
        if any(kwargs.get(n) in HELP_WORDS for n in self.positional):
            return self.show_help()         # `inv rebase --help`: not a source name
        from askbuild import cli
        opts = {n: kwargs.pop(n) for n in self.extra if n in kwargs}
        call = self.body(c, *args, **kwargs)
        debug = opts.pop("debug", False)
        return cli.main(call, debug=debug, **{k: v or None for k, v in opts.items()})

    __call__ = run

    def show_help(self) -> None:
        """Print ``inv --help NAME`` (Invoke hands ``--help`` after a verb with a positional
        argument to that argument)."""
        from invoke import Program
        ns = self.table.collection() if self.table else None
        Program(namespace=ns, binary="inv").run(["inv", "--help", self.name], exit=True)

    def task(self):
        """This verb as an Invoke task: the body's signature plus the common options, their
        help, and the ``@task`` keywords given to :func:`verb`."""
        import inspect

        from invoke import task
        spec = self
        own = inspect.signature(self.body)

        @functools.wraps(self.body)
        def run(c, *args, **kwargs):
            return spec.run(c, *args, **kwargs)

        extra = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d)
                 for n, d in self.extra.items()]
        run.__signature__ = own.replace(parameters=[*own.parameters.values(), *extra])
        helps = {n: COMMON[n][1] for n in self.extra}
        return task(help={**helps, **self.help}, **self.task_kw)(run)


def verb(*, common: tuple[str, ...] = SOURCES, help: dict[str, str] | None = None,
         memo: bool = False, **task_kw: Any) -> Callable[[Callable], VerbSpec]:
    """``@verb(...)`` on ``def name(c, <own options>) -> Callable[[Settings], Any]``: the
    verb with the ``common`` options (names of :data:`COMMON`) added to its signature and
    help; ``task_kw`` (``iterable=``, ``positional=``) as for Invoke's ``@task``.  ``memo``:
    a run of it through ``askbuild`` that changes nothing is recorded, and the next identical
    run answered from that record (:mod:`askbuild.noopmemo`; ``inv`` runs as ``askbuild``:
    :mod:`askbuild.invhook`)."""
    def wrap(body: Callable) -> VerbSpec:
        spec = VerbSpec(body, common, help or {}, task_kw)
        spec.memo = memo
        return spec
    return wrap


class Verbs:
    """The verb table: ``top`` verbs by their own names, ``groups`` as ``{group: {name:
    spec}}`` (``group.name``); ``defaults`` ``{group: name}`` makes ``group`` alone name that
    verb (``image`` = ``image.build``), as an Invoke collection's default task does."""

    def __init__(self, top: Iterable[VerbSpec], groups: dict[str, dict[str, VerbSpec]],
                 defaults: dict[str, str] | None = None) -> None:
        self.top = list(top)
        self.groups = groups
        self.defaults = dict(defaults or {})
        self._collection = None
        for spec in self.top:
            spec.name, spec.table = spec.body.__name__, self
        for group, members in groups.items():
            for name, spec in members.items():
                spec.name, spec.table = f"{group}.{name}", self

    def names(self) -> dict[str, VerbSpec]:
        """Every name a verb is called by on the command line (dotted names and a group's
        default alias) -> its spec."""
        out = {s.name: s for s in self.top}
        for group, members in self.groups.items():
            out.update({s.name: s for s in members.values()})
            if group in self.defaults:
                out[group] = members[self.defaults[group]]
        return out

    def collection(self):
        """The Invoke ``Collection`` of these verbs (built once; imports Invoke)."""
        if self._collection is None:
            from invoke import Collection
            ns = Collection(*[s.task() for s in self.top])
            for group, members in self.groups.items():
                sub = Collection(group)
                for name, spec in members.items():
                    sub.add_task(spec.task(), name=name,
                                 default=self.defaults.get(group) == name or None)
                ns.add_collection(sub)
            self._collection = ns
        return self._collection
