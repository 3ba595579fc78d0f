"""``inv VERB`` run as ``askbuild VERB``, before Invoke is imported.

Invoke's ``inv`` imports Invoke (0.25-0.4 s) before it reads ``tasks.py``, so no ``tasks.py``
could make a no-op ``inv build`` answer in well under a second.  ``./run`` therefore installs
one line into the virtual environment's site-packages, ``askbuild-inv.pth`` (:data:`PTH`;
Python runs an ``import`` line of a ``.pth`` file at start-up, as setuptools' own
``distutils-precedence.pth`` does).  That line does nothing unless the program is
``inv``/``invoke``; then it calls :func:`main`, which

* replays the no-op record of the same command line (:mod:`askbuild.noopmemo`, the record
  ``askbuild`` writes and replays) and ends the process; or
* replaces the process with ``python -P -m askbuild ARGV`` (the same interpreter, with its
  flags): ``askbuild`` parses one known verb and its long options itself and runs it as the
  Invoke task would, and hands any other command line to Invoke's own program unchanged
  (askbuild/__main__.py), so that answer is Invoke's.

It does so only when ``inv`` would run THIS checkout's ``tasks.py`` exactly as ``askbuild``
does (:func:`invoke_runs_this_checkout`, :func:`askbuild.noopmemo.replayable`):

* the first directory from the working directory upwards that holds a ``tasks.py`` or a
  ``tasks/__init__.py`` (Invoke's ``FilesystemLoader``) is this checkout;
* no Invoke configuration file (``/etc/invoke.*``, ``~/.invoke.*``, ``invoke.*`` beside
  ``tasks.py``) exists and no ``INVOKE_*`` variable is set: they could change the collection
  Invoke loads or how it parses;
* the command line starts with a verb, or is ``--list``/``-l`` (core options first, or no
  argument at all: Invoke's).

Otherwise, or when anything here fails, :func:`main` returns and Invoke runs as usual.
``ASKBUILD_NO_MEMO=1`` turns the replay off (the records), not the hand-over.
"""

from __future__ import annotations

import os
import sys

from askbuild import noopmemo

PTH = "askbuild-inv.pth"
# one line: cheap for every other program the interpreter runs (a name test), and silent when
# askbuild is gone from the environment (`site` would print an import error of a .pth line)
PTH_LINE = ("import sys; exec('try:\\n from askbuild.invhook import main\\nexcept Exception:\\n"
            " pass\\nelse:\\n main()') if (getattr(sys, 'argv', None) or [''])[0]"
            ".rpartition('/')[2] in ('inv', 'invoke') else None\n")
CONFIG_EXTS = ("yaml", "yml", "json", "py")
ROOT = os.path.dirname(noopmemo.ROOT)

_done = False


def _config_files() -> list[str]:
    """Invoke's configuration files that would apply to this checkout (its system, user and
    project levels)."""
    home = os.path.expanduser("~")
    return [p for ext in CONFIG_EXTS for p in (f"/etc/invoke.{ext}",
                                                os.path.join(home, f".invoke.{ext}"),
                                                os.path.join(ROOT, f"invoke.{ext}"))]


def _finds_tasks(directory: str) -> bool:
    """Whether Invoke's loader stops at ``directory`` (a ``tasks.py``, or a ``tasks``
    package); OSError when it cannot be listed (Invoke would stop there with an error)."""
    names = os.listdir(directory)
    return "tasks.py" in names or ("tasks" in names and os.path.exists(
        os.path.join(directory, "tasks", "__init__.py")))


def invoke_runs_this_checkout() -> bool:
    """Whether ``inv`` started here loads this checkout's ``tasks.py`` with no configuration
    that could make it run a verb differently from ``askbuild``."""
    if not os.path.isfile(os.path.join(ROOT, "tasks.py")):
        return False
    if any(k.startswith("INVOKE_") for k in os.environ):
        return False
    try:
        if any(os.path.exists(p) for p in _config_files()):
            return False
        here = os.getcwd()
        while True:
            if _finds_tasks(here):
                return os.path.samefile(here, ROOT)
            up = os.path.dirname(here)
            if up == here:
                return False
            here = up
    except OSError:
        return False


def main() -> None:
    """At start-up of ``inv``/``invoke``: replay the record of this command line, or run it
    as ``askbuild``; return (Invoke then runs) when it is not this checkout's."""
    global _done
    if _done:                       # a site dir listed twice (lib64 -> lib) runs the line twice
        return
    _done = True
    try:
        argv = sys.argv[1:]
        if not (noopmemo.replayable(argv) and invoke_runs_this_checkout()):
            return
        output = noopmemo.recorded_output(argv)
    except Exception:               # never stand in Invoke's way
        return
    if output is not None:
        _replay(output)
    try:
        os.execv(sys.executable, [sys.executable, *interpreter_flags(), "-P", "-m", "askbuild",
                                  *argv])
    except Exception:
        return


#: the ``sys.flags`` that ``subprocess._args_from_interpreter_flags`` turns into options
_FLAGS = ("debug", "dont_write_bytecode", "no_site", "verbose", "bytes_warning", "quiet",
          "optimize", "isolated", "ignore_environment", "no_user_site", "safe_path", "dev_mode")


def interpreter_flags() -> list[str]:
    """The options this interpreter was started with, for the one ``inv`` hands over to:
    none when it has no flag, warning option or ``-X`` option (the usual ``inv``), else what
    ``subprocess``'s own helper says (importing ``subprocess``, ~25 ms, only then)."""
    if not sys.warnoptions and not getattr(sys, "_xoptions", None) \
            and not any(getattr(sys.flags, f) for f in _FLAGS):
        return []
    import subprocess
    return subprocess._args_from_interpreter_flags()


def _replay(output: tuple) -> None:
    """Print a record's output and end the process.  SystemExit inside ``site`` would abort
    the interpreter, so it ends with os._exit (nothing is registered to run at exit yet)."""
    try:
        noopmemo.write_output(output)
    except OSError as e:            # stdout closed early (`inv --list | head -1`)
        try:
            sys.stderr.write(f"inv: {e.strerror or e}\n")
            sys.stderr.flush()
        except OSError:
            pass
        os._exit(1)
    os._exit(0)


def site_dir() -> str:
    """The site-packages directory of this interpreter's environment."""
    import sysconfig
    return sysconfig.get_paths()["purelib"]


def install(directory: str | None = None) -> str:
    """Write :data:`PTH` into ``directory`` (default: :func:`site_dir`), atomically; return
    its path."""
    from pathlib import Path

    from askbuild.fsutil import write_bytes_atomic
    path = os.path.join(directory or site_dir(), PTH)
    write_bytes_atomic(Path(path), PTH_LINE.encode("utf-8"))
    return path


if __name__ == "__main__":
    print(install())
