"""IPython magics: run cells on engines from a notebook or IPython shell.

``%load_ext zfarm`` (or ``rc.activate()``) adds:

``%px CODE``            runs CODE on the engines, waits, shows the output
``%%px``                the same for a whole cell
``%autopx``             toggles running every following cell with ``%%px``
``%pxresult``           shows the output of the last ``--noblock`` call
``%pxconfig``           sets the default targets and blocking of the others

``%px`` and ``%%px`` take ``--targets T`` (``all``, ``0``, ``0,2`` or a
slice such as ``1:3`` or ``::2``) and ``--noblock`` (return the
AsyncResult at once; ``%pxresult`` shows its output later); ``%%px
--local`` also runs the cell here, after sending it to the engines.
``%pxconfig --targets T --noblock`` (or ``--block``) makes those the
defaults; the options of one call still win.

Output is grouped per engine, in engine order::

    In [2]: %px import os; print(os.getpid()); 6 * 7
    [stdout:0] 4117
    [stdout:1] 4118
    Out[0:2]: 42
    Out[1:2]: 42

While a cell runs, each engine's output is printed as it arrives, line by
line with the same prefixes; what comes with the results is printed then.

This module imports IPython only inside :func:`register`, because engines
import it too: the function that runs a cell remotely lives here.
"""
from __future__ import annotations

import argparse
import ast
import itertools
import linecache
import shlex
import sys
from typing import Any, List, Optional, Sequence

from ._errors import ZfarmError

_cells = itertools.count(1)


# -- engine side ------------------------------------------------------------------
def run_cell_remote(code: str) -> Optional[str]:
    """Runs ``code`` in the engine's namespace like an interactive cell.

    Returns the repr of the last expression's value (None when the cell
    does not end with an expression, the value is None, or the cell ends
    with ``;``).  Runs on an engine; the engine captures what it prints.
    The source is kept in linecache so tracebacks show the cell's lines.
    """
    from . import _worker

    ns = _worker.namespace
    filename = f"<px[{next(_cells)}]>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
    tree = ast.parse(code, filename=filename)
    last: Optional[ast.Expression] = None
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        last = ast.Expression(tree.body.pop().value)
    exec(compile(tree, filename, "exec"), ns)
    if last is None:
        return None
    value = eval(compile(last, filename, "eval"), ns)
    if value is None or code.rstrip().endswith(";"):
        return None
    ns["_"] = value
    return repr(value)


# -- client side: rendering ----------------------------------------------------------
def _block(label: str, text: str) -> str:
    # One line stays beside its label; several lines start below it.
    text = text.rstrip("\n")
    return f"{label} {text}" if "\n" not in text else f"{label}\n{text}"


def _clean_traceback(tb: str) -> str:
    # Drop the frames of run_cell_remote: the user wants their own code.
    lines, out, skip = tb.splitlines(), [], False
    for line in lines:
        if skip and line.startswith("    "):
            continue
        skip = 'zfarm/_magics.py"' in line or 'zfarm/_worker.py"' in line
        if not skip:
            out.append(line)
    return "\n".join(out)


class PxError(ZfarmError):
    """One or more engines raised in a ``%px`` cell.

    IPython shows it through ``_render_traceback_``: each engine's remote
    traceback, labelled ``[engine:execute]``, instead of a local traceback.
    ``errors`` maps engine id to the exception.
    """

    def __init__(self, errors: "dict[Any, BaseException]", total: int):
        self.errors = errors
        super().__init__(f"{len(errors)} of {total} engines raised an exception")

    def _render_traceback_(self) -> List[str]:
        lines: List[str] = []
        for engine, exc in self.errors.items():
            if hasattr(exc, "ename"):
                body = _clean_traceback(getattr(exc, "traceback", "")) or f"{exc.ename}: {exc.evalue}"
            else:
                body = f"{type(exc).__name__}: {exc}"
            lines.append(_block(f"[{engine}:execute]", body))
        lines.append(str(self))
        return lines


def render(ar: Any, count: Optional[int] = None, stdout: Any = None, stderr: Any = None,
           follow: Any = None) -> None:
    """Prints a finished %px AsyncResult grouped per engine; raises PxError
    if any engine raised.  With ``follow`` (the OutputFollower that showed
    output while the cell ran), only what it has not shown is printed."""
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    errors = {}
    tag = "" if count is None else f":{count}"
    for i, outcome in enumerate(ar._outcomes):
        if outcome is None:
            continue
        engine = outcome.engine_id if outcome.engine_id is not None else f"?{i}"
        out = follow.unshown(i, 0) if follow is not None else outcome.stdout
        err = follow.unshown(i, 1) if follow is not None else outcome.stderr
        if out:
            print(_block(f"[stdout:{engine}]", out), file=stdout)
        if err:
            print(_block(f"[stderr:{engine}]", err), file=stderr)
        if not outcome.ok:
            errors[engine] = outcome.value
        elif outcome.value is not None:
            print(_block(f"Out[{engine}{tag}]:", outcome.value), file=stdout)
    stdout.flush()
    stderr.flush()
    if errors:
        raise PxError(errors, len(ar._outcomes))


def follow_output(ar: Any, interval: float = 0.1) -> Any:
    """Waits for ``ar``, printing each engine's whole lines of output as
    they stream in (``[stdout:0] ...``); returns the OutputFollower, whose
    ``unshown`` is what is left for :func:`render`."""
    from ._asyncresult import OutputFollower

    def write(text: str, stream: int) -> None:
        target = sys.stdout if stream == 0 else sys.stderr
        print(text, file=target, flush=True)

    follow = OutputFollower(ar, write)
    while True:
        with ar._cond:
            if len(ar._completion) >= len(ar):
                break
            ar._cond.wait(interval)  # woken by each chunk and each result
        follow.show()
    ar.wait()
    return follow


# -- client side: the magics ---------------------------------------------------------
def parse_targets(spec: str, ids: Sequence[int]) -> List[int]:
    """``all``, ``3``, ``0,2`` or a slice ``a:b[:c]`` of the registered ids.

    >>> parse_targets("::2", [0, 1, 2, 3])
    [0, 2]
    """
    spec = spec.strip()
    if spec in ("", "all"):
        return list(ids)
    if ":" in spec:
        parts = [int(p) if p.strip() else None for p in spec.split(":")]
        if len(parts) > 3:
            raise ValueError(f"bad slice {spec!r}")
        return list(ids)[slice(*parts)]
    return [int(p) for p in spec.split(",") if p.strip()]


_OPTION_WORDS = ("--targets", "-t", "--noblock", "--block")


def _parser(name: str, local: bool = False) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"%{name}", add_help=False, exit_on_error=False)
    p.add_argument("--targets", "-t", default=None)
    g = p.add_mutually_exclusive_group()
    g.add_argument("--noblock", dest="block", action="store_false", default=None)
    g.add_argument("--block", dest="block", action="store_true")
    if local:
        p.add_argument("--local", action="store_true")
    return p


def split_options(line: str) -> "tuple[List[str], str]":
    """Splits the leading ``%px`` options off a line; the rest is code.

    >>> split_options("--targets 0,1 --noblock x = 1")
    (['--targets', '0,1', '--noblock'], 'x = 1')
    """
    words: List[str] = []
    rest = line.lstrip()
    while True:
        word, _, after = rest.partition(" ")
        if word not in _OPTION_WORDS:
            return words, rest
        words.append(word)
        rest = after.lstrip()
        if word in ("--targets", "-t"):
            value, _, rest = rest.partition(" ")
            words.append(value)
            rest = rest.lstrip()


def _parse_options(name: str, words: List[str], local: bool = False) -> argparse.Namespace:
    from IPython.core.error import UsageError

    try:
        args, extra = _parser(name, local).parse_known_args(words)
    except (argparse.ArgumentError, SystemExit) as exc:
        raise UsageError(f"%{name}: {exc}") from None
    if extra:
        raise UsageError(f"%{name}: unknown arguments {extra}")
    return args


class PxMagics:
    """The state behind the magics of one IPython shell: which engines they use.

    ``targets`` is ``"all"`` (every engine registered when a cell runs) or a
    list of engine ids.
    """

    def __init__(self, shell: Any, client: Any = None, targets: Any = "all", suffix: str = ""):
        self.shell = shell
        self.client = client
        self.targets = targets
        self.suffix = suffix
        self.block = True
        self.last_result: Any = None
        self._autopx = False

    # -- the work ----------------------------------------------------------------
    def _target_ids(self, spec: Optional[str]) -> List[int]:
        if self.client is None:
            raise ZfarmError("no zfarm client is active: connect one and call rc.activate()")
        ids = self.client.ids
        if spec is None:
            chosen = list(ids) if self.targets == "all" else list(self.targets)
        else:
            chosen = parse_targets(spec, ids)
        missing = [t for t in chosen if t not in ids]
        if missing or not chosen:
            raise ZfarmError(f"targets {chosen} are not all registered; engines: {ids}")
        return chosen

    def run(self, code: str, targets: Optional[str] = None, block: Optional[bool] = None) -> Any:
        """Runs ``code`` on the engines; prints grouped output when blocking."""
        from ._view import DirectView

        ar = DirectView(self.client, self._target_ids(targets)).apply_async(run_cell_remote, code)
        self.last_result = ar
        if not (self.block if block is None else block):
            return ar
        follow = follow_output(ar)
        render(ar, getattr(self.shell, "execution_count", None), follow=follow)
        return None

    # -- magic entry points --------------------------------------------------------
    def px_line(self, line: str) -> Any:
        words, code = split_options(line)
        args = _parse_options("px", words)
        if not code.strip():
            return None
        return self.run(code, args.targets, args.block)

    def px_cell(self, line: str, cell: str) -> Any:
        args = _parse_options("px", shlex.split(line), local=True)
        result = self.run(cell, args.targets, args.block)
        if args.local:
            # Here too, after the engines got it (so they run meanwhile);
            # a local failure shows as the cell's error, as usual.
            self.shell.run_cell(cell)
        return result

    def pxconfig(self, line: str = "") -> None:
        args = _parse_options("pxconfig", shlex.split(line))
        if args.targets is not None:
            spec = args.targets.strip()
            try:
                if spec == "all":
                    self.targets = "all"
                elif ":" in spec:  # a slice of the engines registered now
                    self.targets = parse_targets(spec, self._target_ids("all"))
                else:
                    self.targets = parse_targets(spec, [])
            except ValueError as exc:
                from IPython.core.error import UsageError

                raise UsageError(f"%pxconfig: bad targets {spec!r}: {exc}") from None
        if args.block is not None:
            self.block = args.block

    def pxresult(self, line: str = "") -> None:
        if self.last_result is None:
            from IPython.core.error import UsageError

            raise UsageError("%pxresult: no %px call has been made yet")
        self.last_result.wait()
        render(self.last_result)

    def autopx(self, line: str = "") -> None:
        transformers = self.shell.input_transformers_cleanup
        if self._autopx:
            self._autopx = False
            if self._transform in transformers:
                transformers.remove(self._transform)
            print("%autopx disabled")
        else:
            self._target_ids(None)  # fail now, not on the next cell
            self._autopx = True
            transformers.append(self._transform)
            print("%autopx enabled: cells run on the engines; %autopx again to stop")

    def _transform(self, lines: List[str]) -> List[str]:
        # Rewrites a whole cell into a %%px call, except cells that start
        # with one of these magics (so %autopx can switch itself off).
        text = "".join(lines)
        head = text.lstrip()
        if not head or head.startswith(("%autopx", "%pxresult", "%%px", "%px")):
            return lines
        return [f"get_ipython().run_cell_magic({'px' + self.suffix!r}, '', {text!r})\n"]


_ACTIVE: "dict[int, dict[str, PxMagics]]" = {}


def register(shell: Any, client: Any = None, targets: Any = "all", suffix: str = "") -> PxMagics:
    """Adds %px{suffix}, %%px{suffix}, %autopx{suffix}, %pxresult{suffix} and %pxconfig{suffix}
    to ``shell``; with a ``client``, binds them to its engines ``targets``."""
    per_shell = _ACTIVE.setdefault(id(shell), {})
    magics = per_shell.get(suffix)
    if magics is None:
        magics = PxMagics(shell, suffix=suffix)
        per_shell[suffix] = magics
        shell.register_magic_function(magics.px_line, "line", f"px{suffix}")
        shell.register_magic_function(magics.px_cell, "cell", f"px{suffix}")
        shell.register_magic_function(magics.autopx, "line", f"autopx{suffix}")
        shell.register_magic_function(magics.pxresult, "line", f"pxresult{suffix}")
        shell.register_magic_function(magics.pxconfig, "line", f"pxconfig{suffix}")
    if client is not None:
        magics.client = client
        magics.targets = targets
    return magics


def activate(client: Any, targets: Any = "all", suffix: str = "") -> PxMagics:
    """Binds the magics of the running IPython to ``client``'s engines."""
    try:
        from IPython import get_ipython
    except ImportError as exc:
        raise ZfarmError("activate() needs IPython (pip install ipython)") from exc
    shell = get_ipython()
    if shell is None:
        raise ZfarmError("activate() needs a running IPython shell or notebook kernel")
    if targets != "all":
        targets = [targets] if isinstance(targets, int) else list(targets)
    return register(shell, client, targets, suffix)


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext zfarm``: adds the magics; ``rc.activate()`` chooses the engines."""
    register(shell)
