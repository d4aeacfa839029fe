"""``fedrec.procs``: children that end with their parent (issue 27), in seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from fedrec.procs import start_child

linux = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG, /proc"
)


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


def _gone(pids: list[int], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while any(_running(q) for q in pids):
        if time.monotonic() > end:
            return False
        time.sleep(0.05)
    return True


def _kill(pids: list[int]) -> None:
    for q in pids:
        if _running(q):
            os.kill(q, signal.SIGKILL)


# `setsid sleep`: a grandchild in a session of its own, as Flower starts a
# SuperLink's SuperExec; its pid is printed
ESCAPER = "setsid sleep 100 & echo $!; "


def test_the_command_s_exit_status_signals_and_errors_are_popen_s():
    assert start_child(["sh", "-c", "exit 3"]).wait() == 3
    assert start_child(["sh", "-c", "kill -TERM $$"]).wait() == -signal.SIGTERM
    p = start_child(
        ["sh", "-c", "echo out; echo err >&2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert p.communicate() == ("out\n", "err\n") and p.args[0] == "sh"
    with pytest.raises(FileNotFoundError):
        start_child(["no-such-command-fedrec"])


def test_a_signal_reaches_the_command():
    p = start_child(["sleep", "100"])
    time.sleep(0.5)  # the supervisor has started it
    p.terminate()
    assert p.wait(timeout=10) == -signal.SIGTERM


@linux
def test_the_command_s_end_ends_what_it_left_running():
    p = start_child(["sh", "-c", ESCAPER], stdout=subprocess.PIPE, text=True)
    left = [int(p.stdout.readline())]
    try:
        assert p.wait(timeout=10) == 0
        assert _gone(left, 5)
    finally:
        _kill(left)


@linux
def test_a_sigkilled_parent_leaves_no_descendant():
    parent = textwrap.dedent(f"""
        import time
        from fedrec.procs import start_child
        p = start_child(["sh", "-c", "{ESCAPER}sleep 100 & echo $!; wait"])
        time.sleep(100)
    """)
    helper = start_child(
        [sys.executable, "-c", parent],
        supervise=False,
        stdout=subprocess.PIPE,
        text=True,
    )
    tree = [int(helper.stdout.readline()), int(helper.stdout.readline())]
    try:
        helper.kill()
        helper.wait()
        assert _gone(tree, 5)
    finally:
        _kill(tree)


def test_sigterm_exits_runs_finally_blocks():
    code = textwrap.dedent("""
        import os, signal, time
        from fedrec.procs import sigterm_exits
        with sigterm_exits():
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(10)
            finally:
                print("cleaned up")
    """)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 128 + signal.SIGTERM
    assert done.stdout == "cleaned up\n"
