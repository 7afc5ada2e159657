"""Output streamed while a task runs (protocol Output, revision 1).

Each streaming test holds its task on a gate file the test controls, so
"seen before the task ended" is a fact, not a race: the task cannot end
until the test has seen its first line and opened the gate.
"""
from __future__ import annotations

import sys
import threading

import cloudpickle
import pytest

from conftest import WAIT, OpenGateWhenShown, wait_until

from zfarm import _worker

# The task functions below travel by value: engines cannot import this file.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def print_wait_print(gate: str, wait_s: float = WAIT):
    """Runs on an engine: prints, waits for the gate file, prints again.

    Returns whether the gate opened in time (False: the test never saw the
    first line, so it never opened it)."""
    import os as _os
    import sys as _sys
    import time as _time

    print("first")
    print("warning one", file=_sys.stderr)
    deadline = _time.monotonic() + wait_s
    while not _os.path.exists(gate):
        if _time.monotonic() > deadline:
            print("second")
            return False
        _time.sleep(0.01)
    print("second")
    return True


def print_nothing(x):
    return x + 1


def print_lots(n_mib: int) -> int:
    """Prints n_mib MiB; returns how much the engine's peak memory grew (bytes)."""
    import sys as _sys

    def peak() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return 0

    before = peak()
    block = "x" * (1 << 20)
    for _ in range(n_mib):
        _sys.stdout.write(block)
    return peak() - before


def test_first_line_is_in_ar_stdout_while_the_task_runs_and_final_output_has_each_line_once(rc, tmp_path):
    gate = str(tmp_path / "gate")
    ar = rc[:].apply_async(print_wait_print, gate)
    n = len(rc.ids)
    wait_until(lambda: ar.stdout == ["first\n"] * n, what="the first line of every engine in ar.stdout")
    wait_until(lambda: ar.stderr == ["warning one\n"] * n, what="the stderr line of every engine")
    assert not ar.done()  # each task is still held on the gate
    assert ar.progress == 0
    open(gate, "w").close()
    assert ar.get(timeout=WAIT) == [True] * n
    assert ar.stdout == ["first\nsecond\n"] * n
    assert ar.stderr == ["warning one\n"] * n
    status = rc.queue_status()
    assert status["outputs_forwarded"] >= n
    assert status["outputs_malformed"] == 0


def test_a_single_task_streams_one_string_and_callback_pieces_join_to_the_final_output(rc, tmp_path):
    gate = str(tmp_path / "gate")
    pieces = []
    got_first = threading.Event()

    def on_output(index, engine_id, stream, text):
        pieces.append((index, engine_id, stream, text))
        if stream == "stdout" and "first" in text:
            got_first.set()

    ar = rc.load_balanced_view().apply_async(print_wait_print, gate)
    ar.on_output(on_output)
    assert got_first.wait(WAIT), "the callback never saw the first line"
    assert not ar.done()
    assert ar.stdout == "first\n"  # a single task: one string, as far as it got
    open(gate, "w").close()
    assert ar.get(timeout=WAIT) is True
    assert ar.stdout == "first\nsecond\n"
    engine = ar.engine_id
    assert {(i, e) for i, e, _, _ in pieces} == {(0, engine)}
    assert "".join(t for _, _, s, t in pieces if s == "stdout") == ar.stdout
    assert "".join(t for _, _, s, t in pieces if s == "stderr") == ar.stderr


def test_a_fast_task_gives_its_whole_output_to_the_callback_once(rc):
    pieces = []
    ar = rc.load_balanced_view().apply_async(print, "quick")
    ar.on_output(lambda i, e, s, t: pieces.append((s, t)))
    ar.get(timeout=WAIT)
    # Registered right after submitting: whatever was streamed and the rest
    # together are the final output, once.
    assert "".join(t for s, t in pieces if s == "stdout") == "quick\n" == ar.stdout


def wait_then_print(gate: str) -> bool:
    """Runs on an engine: prints nothing until the gate opens."""
    import os as _os
    import time as _time

    deadline = _time.monotonic() + WAIT
    while not _os.path.exists(gate) and _time.monotonic() < deadline:
        _time.sleep(0.01)
    print("done")
    return _os.path.exists(gate)


def test_a_running_task_that_printed_nothing_reads_as_empty_output(rc, tmp_path):
    gate = str(tmp_path / "gate")
    ar = rc[:].apply_async(wait_then_print, gate)
    assert ar.stdout == [""] * len(rc.ids)  # not None: nothing printed yet
    assert ar.stderr == [""] * len(rc.ids)
    assert not ar.done()
    open(gate, "w").close()
    assert ar.get(timeout=WAIT) == [True] * len(rc.ids)
    assert ar.stdout == ["done\n"] * len(rc.ids)


def test_tasks_that_print_nothing_send_no_output_messages(rc):
    before = rc.queue_status()["outputs_forwarded"]
    lv = rc.load_balanced_view()
    assert lv.map_sync(print_nothing, range(200), chunksize=1) == list(range(1, 201))
    assert rc[:].apply_sync(print_nothing, 1) == [2] * len(rc.ids)
    status = rc.queue_status()
    assert status["outputs_forwarded"] == before
    assert status["outputs_dropped"] == 0


def test_a_huge_print_stays_bounded_and_the_result_says_so(rc):
    limit = _worker.OUTPUT_LIMIT
    assert limit == 8 * 1024 * 1024  # the default (ZFARM_OUTPUT_LIMIT unset in the tests)
    streamed = []
    ar = rc.load_balanced_view().apply_async(print_lots, 128)
    ar.on_output(lambda i, e, s, t: streamed.append(t))
    grew = ar.get(timeout=WAIT)
    # 128 MiB printed; the engine kept at most the limit (8 MiB of ASCII).
    assert grew < 48 * 1024 * 1024, f"engine peak memory grew by {grew} bytes"
    out = ar.stdout
    kept, _, note = out.rpartition("\n[zfarm: ")
    assert len(kept) == limit
    assert note == f"output limit of {limit} characters reached; {128 * 2**20 - limit} more were dropped]\n"
    # What was streamed, and what came after, is the final text once.
    assert "".join(streamed) == out
    assert rc.queue_status()["outputs_malformed"] == 0


def test_wait_interactive_shows_output_as_it_arrives(rc, tmp_path, monkeypatch):
    pytest.importorskip("tqdm")
    gate = str(tmp_path / "gate")
    shown = OpenGateWhenShown(gate, needles=[f"[stdout:{e}] first" for e in rc.ids])
    monkeypatch.setattr(sys, "stdout", shown)
    ar = rc[:].apply_async(print_wait_print, gate)
    assert ar.wait_interactive(timeout=2 * WAIT)
    monkeypatch.undo()
    assert ar.get(timeout=0) == [True] * len(rc.ids)  # the gate opened because the lines were shown
    text = shown.getvalue()
    for e in rc.ids:
        assert text.count(f"[stdout:{e}] first") == 1
        assert text.count(f"[stdout:{e}] second") == 1
        assert text.index(f"[stdout:{e}] first") < text.index(f"[stdout:{e}] second")


def test_a_task_whose_engine_died_keeps_what_it_streamed(own_cluster, tmp_path):
    import zfarm

    c = own_cluster(n=1)
    with c.connect(timeout=WAIT) as rc:
        gate = str(tmp_path / "gate")  # never opened
        ar = rc[:].apply_async(print_wait_print, gate)
        wait_until(lambda: ar.stdout == ["first\n"], what="the first line")
        c.engines[0].kill()
        c.engines[0].wait(WAIT)
        with pytest.raises(zfarm.EngineDiedError):
            ar.get(timeout=WAIT)
        assert ar.stdout == ["first\n"]  # the Result had none of its own
        assert ar.stderr == ["warning one\n"]


def log_print_wait(gate: str) -> bool:
    """Runs on an engine: logs through a handler an earlier task made, prints, waits."""
    import logging

    logging.getLogger("zfarm-test-kept").warning("stale")
    return print_wait_print(gate)


def test_a_stream_kept_from_an_earlier_task_does_not_stream_into_a_later_one(rc, tmp_path):
    engine = rc.ids[0]
    # Task 1 keeps its sys.stdout in a logging handler.
    rc[engine].execute("import logging, sys\n"
                       "logging.getLogger('zfarm-test-kept').addHandler(logging.StreamHandler(sys.stdout))",
                       block=True)
    gate = str(tmp_path / "gate")
    ar = rc[engine].apply_async(log_print_wait, gate)
    wait_until(lambda: "first" in ar.stdout, what="the first line")
    assert "stale" not in ar.stdout
    open(gate, "w").close()
    assert ar.get(timeout=WAIT) is True
    assert ar.stdout == "first\nsecond\n"


def print_past_the_limit_and_wait(gate: str, lines: int, wait_s: float = WAIT) -> bool:
    """Runs on an engine: prints `lines` lines of 100 characters (newline included), then waits for the gate."""
    import os as _os
    import time as _time

    for i in range(lines):
        print(f"{i:02d}" + "y" * 97)
    deadline = _time.monotonic() + wait_s
    while not _os.path.exists(gate):
        if _time.monotonic() > deadline:
            return False
        _time.sleep(0.01)
    return True


def test_reaching_the_output_limit_is_shown_while_the_task_runs(own_cluster, tmp_path, monkeypatch):
    pytest.importorskip("tqdm")
    monkeypatch.setenv("ZFARM_OUTPUT_LIMIT", "1000")  # the engines read it at start
    c = own_cluster(n=1)
    with c.connect(timeout=WAIT) as rc:
        engine = rc.ids[0]
        notice = f"[stdout:{engine}] [zfarm: output limit reached; further stdout of this task is dropped]"
        gate = str(tmp_path / "gate")
        shown = OpenGateWhenShown(gate, needles=[notice])
        monkeypatch.setattr(sys, "stdout", shown)
        ar = rc[:].apply_async(print_past_the_limit_and_wait, gate, 30)
        assert ar.wait_interactive(timeout=2 * WAIT)
        monkeypatch.undo()  # sys.stdout back (the engine read its limit at start)
        assert ar.get(timeout=0) == [True]  # the gate opened: the notice came while the task ran
        text = shown.getvalue()
        assert text.count(notice) == 1
        assert f"[stdout:{engine}] 09" in text and f"[stdout:{engine}] 10" not in text  # 10 lines kept
        assert "output limit of 1000 characters reached; 2000 more were dropped" in text  # the final note too
