"""``askbuild VERB [OPTIONS]`` / ``python -m askbuild ...``: the verbs of ``tasks.py`` without
Invoke's start-up.

Invoke's ``inv`` imports Invoke (~0.3 s: ``importlib.metadata``, ``unittest.mock``,
``asyncio``) before it runs any verb (in this checkout's venv, ``inv`` hands its command line
here first: askbuild/invhook.py).  This entry point loads ``tasks.py`` (the checkout's,
next to this package), parses the argv of ONE known verb itself, following Invoke's rules for
it (``--long-option VALUE``, ``--long-option=VALUE``, boolean flags, an iterable option
repeated, positional arguments, ``_`` in a parameter name -> ``-`` in its option), and runs
the verb exactly as the Invoke task does (:meth:`askbuild.verbs.VerbSpec.run`: same settings,
messages and exit codes).

Anything else is handed, unchanged, to Invoke's own program (the one ``inv`` runs, with this
checkout as the default search root), so it behaves as ``inv`` does: ``--list``/``-l``,
``--help``/``-h`` anywhere, short flags, core options, several verbs, an unknown verb or
option, a repeated option, a value that starts with ``-``, ``--``, no verb at all.
"""

from __future__ import annotations

import contextlib
import os
import sys

from askbuild import noopmemo

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = os.path.join(ROOT, "tasks.py")


def load_tasks():
    """The checkout's ``tasks.py`` as module ``tasks`` (as Invoke's loader imports it), or
    None when this askbuild is not run from a checkout."""
    module = sys.modules.get("tasks")
    if module is not None and getattr(module, "__file__", None) == TASKS:
        return module
    if not os.path.isfile(TASKS):
        return None
    import importlib.util
    spec = importlib.util.spec_from_file_location("tasks", TASKS)
    module = importlib.util.module_from_spec(spec)
    sys.modules["tasks"] = module
    spec.loader.exec_module(module)
    return module


def _flag(name: str) -> str:
    """Invoke's option for a parameter: ``work_dir`` -> ``--work-dir``, ``continue_`` ->
    ``--continue`` (one letter: ``-k``)."""
    main = name.strip("_").replace("_", "-")
    return f"-{main}" if len(main) == 1 else f"--{main}"


def _cast(default: object, value: str) -> object:
    """A value as Invoke casts it: to the type of the default (str when there is none);
    ValueError when that fails or the type is not a plain one (then Invoke parses it)."""
    from askbuild.verbs import EMPTY
    if default is None or isinstance(default, str) or default is EMPTY:
        return value
    if type(default) in (int, float):
        return type(default)(value)
    raise ValueError(f"not a str, int or float default: {default!r}")


def parse(names: dict, argv: list[str]) -> tuple[object, dict[str, object]] | None:
    """``(spec, kwargs)`` for ``argv`` = one known verb and its long options and positional
    arguments, with every keyword argument the Invoke task would receive; None when the argv
    is anything else (Invoke then parses it).  ``names`` is ``Verbs.names()``."""
    if not argv or argv[0] not in names:
        return None
    spec = names[argv[0]]
    params = spec.parameters
    flags: dict[str, tuple[str, bool]] = {}         # option -> (parameter, value of a flag)
    for n, d in params.items():
        if n not in spec.positional and len(n.strip("_")) > 1:
            flags[_flag(n)] = (n, True)
            if d is True:
                flags[_flag(f"no_{n}")] = (n, False)
    kwargs = spec.defaults()
    waiting = list(spec.positional)
    seen: set[str] = set()
    tokens = list(argv[1:])
    while tokens:
        token = tokens.pop(0)
        if not token.startswith("-"):
            if not waiting:
                return None                          # another verb, or a stray word
            kwargs[waiting.pop(0)] = token
            continue
        option, eq, value = token.partition("=")
        if option not in flags:
            return None              # --help, -l, short flags, core options, unknown ones, --
        n, flag_value = flags[option]
        repeated = n in seen and n not in spec.iterable
        seen.add(n)
        if isinstance(params[n], bool):
            if eq or repeated:
                return None
            kwargs[n] = flag_value
            continue
        if not eq:
            if not tokens:
                return None
            value = tokens.pop(0)
        if repeated or value.startswith("-"):
            return None
        if n in spec.iterable:
            kwargs[n] = [*kwargs[n], value]
            continue
        try:
            kwargs[n] = _cast(params[n], value)
        except ValueError:
            return None
    if waiting:
        return None                                  # Invoke says which argument is missing
    return spec, kwargs


def program(cls: type | None = None):
    """Invoke's program as ``inv`` runs it (``invoke.main.program``), its default search root
    this checkout; ``cls``: a subclass of ``invoke.Program`` to make instead (tests)."""
    from invoke import Program, __version__
    from invoke.loader import FilesystemLoader

    class Loader(FilesystemLoader):
        @property
        def start(self) -> str:
            return self._start or (ROOT if os.path.isfile(TASKS) else os.getcwd())

    return (cls or Program)(name="Invoke", binary="inv[oke]", binary_names=["invoke", "inv"],
                            version=__version__, loader_class=Loader)


def hand_over(argv: list[str]) -> None:
    """Run ``argv`` as ``inv ARGV`` would (from this checkout)."""
    program().run(["inv", *argv])


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        try:
            _dispatch(argv)
        finally:
            # (a closed stdout is found here, not in the interpreter's own flush at exit,
            # which would only print "Exception ignored" and exit 120)
            sys.stdout.flush()
    except KeyboardInterrupt:
        sys.exit(1)                 # as Invoke's program does outside a verb's cli.main
    except BrokenPipeError as e:    # stdout closed early (`./run --list | head -1`)
        closed_stdout(e)


def _dispatch(argv: list[str]) -> None:
    # a command line that does not start with a verb (--list, --help, core options, none)
    # is Invoke's whatever tasks.py holds: no need to load it twice
    verb_first = bool(argv) and not argv[0].startswith("-")
    listing = argv in (["--list"], ["-l"])
    if noopmemo.replayable(argv) and noopmemo.replay(argv):
        return                      # a no-op answered from its record (askbuild/noopmemo.py)
    tasks = load_tasks() if verb_first else None
    parsed = parse(tasks.VERBS.names(), argv) if tasks is not None else None
    if parsed is None:
        if listing and noopmemo.enabled():
            with noopmemo.Recorder(argv):
                return hand_over(argv)
        return hand_over(argv)
    spec, kwargs = parsed
    if spec.memo and noopmemo.enabled():
        with noopmemo.Recorder(argv):
            spec.run(None, **kwargs)
    else:
        spec.run(None, **kwargs)


def closed_stdout(e: OSError) -> None:
    """End the process after a write to a closed stdout: one line on stderr, exit 1 (as the
    replay of a record does, askbuild/invhook.py), no traceback; stdout is pointed at
    /dev/null so that the interpreter's own flush at exit does not fail again."""
    with contextlib.suppress(OSError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    with contextlib.suppress(OSError):
        sys.stderr.write(f"askbuild: {e.strerror or e}\n")
        sys.stderr.flush()
    sys.exit(1)


if __name__ == "__main__":
    main()
