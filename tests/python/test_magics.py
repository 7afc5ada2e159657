"""IPython magics (%px, %%px, %autopx, %pxresult) in an in-process IPython shell."""
from __future__ import annotations

import os
import re
import sys

import pytest

from conftest import WAIT, OpenGateWhenShown

pytest.importorskip("IPython")
from IPython.core.interactiveshell import InteractiveShell  # noqa: E402

import zfarm  # noqa: E402
from zfarm import _magics  # noqa: E402


@pytest.fixture()
def shell(tmp_path, monkeypatch):
    """A fresh IPython shell, its magics not yet bound to any client."""
    from traitlets.config import Config

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    config = Config()
    config.HistoryManager.enabled = False  # no history database, no saving thread
    InteractiveShell.clear_instance()
    _magics._ACTIVE.clear()
    ip = InteractiveShell.instance(config=config)
    try:
        yield ip
    finally:
        _magics._ACTIVE.clear()
        InteractiveShell.clear_instance()


def run(ip, cell: str):
    return ip.run_cell(cell)


def test_px_line_runs_on_every_engine_output_grouped_per_engine(shell, rc, capsys):
    ids = rc.ids
    rc.activate()
    result = run(shell, "%px import os; print('pid', os.getpid()); 6 * 7")
    assert result.success, result.error_in_exec
    out = capsys.readouterr().out
    pids = rc[:].apply_sync(os.getpid)
    for engine, pid in zip(ids, pids):
        assert f"[stdout:{engine}] pid {pid}" in out
        assert re.search(rf"^Out\[{engine}(:\d+)?\]: 42$", out, re.M), out
    # Grouped: everything of the first engine comes before the second's.
    assert out.index(f"[stdout:{ids[0]}]") < out.index(f"Out[{ids[0]}") < out.index(f"[stdout:{ids[1]}]")
    assert os.getpid() not in pids


def test_px_cell_targets_one_engine_with_stdout_and_stderr(shell, rc, capsys):
    ids = rc.ids
    rc.activate()
    cell = f"%%px --targets {ids[1]}\nimport sys\nprint('err', file=sys.stderr)\nprint('a')\nprint('b')\nv = 7\n"
    assert run(shell, cell).success
    captured = capsys.readouterr()
    assert f"[stdout:{ids[1]}]\na\nb" in captured.out
    assert f"[stderr:{ids[1]}] err" in captured.err
    assert f"[stdout:{ids[0]}]" not in captured.out
    assert rc[ids[1]].pull("v", block=True) == 7
    with pytest.raises(zfarm.RemoteError):
        rc[ids[0]].pull("v", block=True)


def test_px_exception_shows_each_engines_traceback_and_fails_the_cell(shell, rc, capsys):
    ids = rc.ids
    rc.activate()
    result = run(shell, "%%px\ndef f(x):\n    return 1 / x\nf(0)\n")
    assert not result.success
    assert isinstance(result.error_in_exec, _magics.PxError)
    assert sorted(result.error_in_exec.errors) == ids
    out = capsys.readouterr().out
    for engine in ids:
        assert f"[{engine}:execute]" in out
    assert out.count("ZeroDivisionError: division by zero") == len(ids)
    assert "return 1 / x" in out  # the user's own frame is kept
    assert "_magics.py" not in out and "_worker.py" not in out
    # The engines are fine afterwards.
    assert run(shell, "%px 1 + 1").success


def test_px_noblock_returns_async_result_and_pxresult_shows_it(shell, rc, capsys):
    ids = rc.ids
    rc.activate()
    assert run(shell, "ar = %px --noblock import time; time.sleep(0.2); print('late')").success
    ar = shell.user_ns["ar"]
    assert isinstance(ar, zfarm.AsyncResult)
    assert ar.wait(WAIT)
    capsys.readouterr()
    assert run(shell, "%pxresult").success
    out = capsys.readouterr().out
    for engine in ids:
        assert f"[stdout:{engine}] late" in out


def test_autopx_sends_cells_to_engines_until_switched_off(shell, rc, capsys):
    ids = rc.ids
    rc.activate()
    assert run(shell, "%autopx").success
    assert run(shell, "import os\nw = os.getpid()\nw").success
    out = capsys.readouterr().out
    pids = rc[:].pull("w", block=True)
    for engine, pid in zip(ids, pids):
        assert re.search(rf"^Out\[{engine}(:\d+)?\]: {pid}$", out, re.M), out
    assert "w" not in shell.user_ns
    assert run(shell, "%autopx").success
    assert run(shell, "w = 'local'").success
    assert shell.user_ns["w"] == "local"
    assert rc[:].pull("w", block=True) == pids


def test_activate_with_suffix_and_targets_adds_a_second_set(shell, rc, capsys):
    ids = rc.ids
    rc.activate()
    rc.activate(targets=ids[0], suffix="0")
    assert run(shell, "%px0 import os; os.getpid()").success
    out = capsys.readouterr().out
    assert f"Out[{ids[0]}" in out and f"Out[{ids[1]}" not in out
    # A DirectView binds the same way.
    rc[[ids[1]]].activate(suffix="1")
    assert run(shell, "%px1 'one'").success
    out = capsys.readouterr().out
    assert f"Out[{ids[1]}" in out and f"Out[{ids[0]}" not in out


def test_pxconfig_sets_default_targets_and_blocking(shell, rc, capsys):
    ids = rc.ids
    rc.activate()
    assert run(shell, f"%pxconfig --targets {ids[1]}").success
    assert run(shell, "%px import os; os.getpid()").success
    out = capsys.readouterr().out
    assert f"Out[{ids[1]}" in out and f"Out[{ids[0]}" not in out
    # A call's own option still wins; a slice is resolved against the engines now.
    assert run(shell, f"%px --targets {ids[0]} 'zero'").success
    assert f"Out[{ids[0]}" in capsys.readouterr().out
    assert run(shell, "%pxconfig --targets ::2 --noblock").success  # of every engine, not of the default
    result = run(shell, "ar = %px 5 * 5")
    assert result.success
    ar = shell.user_ns["ar"]
    assert isinstance(ar, zfarm.AsyncResult) and ar.get(timeout=WAIT) == ["25"]
    assert ar.engine_id == [ids[0]]
    assert run(shell, "%pxconfig --targets all --block").success
    assert run(shell, "%px 'both'").success
    out = capsys.readouterr().out
    assert f"Out[{ids[0]}" in out and f"Out[{ids[1]}" in out
    assert not run(shell, "%pxconfig --targets x,y").success


def test_px_cell_local_runs_here_and_on_the_engines(shell, rc, capsys):
    rc.activate()
    assert run(shell, "%%px --local\nimport os\nwhere = os.getpid()\n").success
    assert shell.user_ns["where"] == os.getpid()
    pids = rc[:].pull("where", block=True)
    assert len(set(pids)) == 2 and os.getpid() not in pids


def test_load_ext_without_a_client_gives_a_clear_error(shell, capsys):
    assert run(shell, "%load_ext zfarm").success
    result = run(shell, "%px 1")
    assert isinstance(result.error_in_exec, zfarm.ZfarmError)
    assert "rc.activate()" in str(result.error_in_exec)


def test_bad_options_and_unknown_targets_are_usage_errors(shell, rc, capsys):
    rc.activate()
    result = run(shell, "%px --targets 99 1")
    assert isinstance(result.error_in_exec, zfarm.ZfarmError)
    result = run(shell, "%%px --bogus\n1\n")
    assert not result.success
    # Code that starts with a minus is code, not an option.
    assert run(shell, "%px -1").success
    assert re.search(r"^Out\[\d+(:\d+)?\]: -1$", capsys.readouterr().out, re.M)


def test_split_options_and_parse_targets():
    assert _magics.split_options("--targets 0,1 --noblock x = 1") == (["--targets", "0,1", "--noblock"], "x = 1")
    assert _magics.split_options("-t 1 print(1)") == (["-t", "1"], "print(1)")
    assert _magics.split_options("--block") == (["--block"], "")
    assert _magics.parse_targets("all", [3, 4, 5]) == [3, 4, 5]
    assert _magics.parse_targets("1:", [3, 4, 5]) == [4, 5]
    assert _magics.parse_targets("3,5", [3, 4, 5]) == [3, 5]
    with pytest.raises(ValueError):
        _magics.parse_targets("1:2:3:4", [3])


WAIT_FOR_GATE = f"""
def wait_for(path):
    import os, time
    deadline = time.monotonic() + {WAIT}
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True
"""


@pytest.mark.parametrize("form", ["line", "cell"])
def test_px_prints_each_engines_output_while_the_cell_runs(shell, rc, tmp_path, monkeypatch, form):
    ids = rc.ids
    rc.activate()
    rc[:].execute(WAIT_FOR_GATE, block=True)
    gate = str(tmp_path / "gate")
    if form == "line":
        cell = f"%px print('first'); ok = wait_for({gate!r}); print('second'); ok"
    else:
        cell = f"%%px\nprint('first')\nok = wait_for({gate!r})\nprint('second')\nok\n"
    shown = OpenGateWhenShown(gate, [f"[stdout:{e}] first" for e in ids])
    monkeypatch.setattr(sys, "stdout", shown)
    result = run(shell, cell)
    monkeypatch.undo()
    assert result.success, result.error_in_exec
    out = shown.getvalue()
    for engine in ids:
        # True: the gate opened because the first line was shown while the
        # engine still waited, not because the wait ran out.
        assert re.search(rf"^Out\[{engine}(:\d+)?\]: True$", out, re.M), out
        assert out.count(f"[stdout:{engine}] first") == 1, out
        assert out.count(f"[stdout:{engine}] second") == 1, out
        assert out.index(f"[stdout:{engine}] first") < out.index(f"[stdout:{engine}] second")
        assert out.index(f"[stdout:{engine}] second") < out.index(f"Out[{engine}")
    assert shell.user_ns.get("ok") is None  # it ran remotely
    assert rc[:].pull("ok", block=True) == [True] * len(ids)
