"""Child processes that end when the process that started them ends (issue 27).

:func:`start_child` is :class:`subprocess.Popen` for long-lived children (a
Flower SuperLink, SuperNodes, the ``flwr`` CLI): however the parent ends,
they end too, with every process they started.

On Linux each child runs under a small supervisor (this file run as a
script, :func:`_supervise`), which starts the command and waits:

- **The parent is killed** (``SIGKILL``, a ``SIGTERM`` it does not handle, a
  crash, ``os._exit``): the kernel tells the supervisor, which asked for it
  with ``prctl(PR_SET_PDEATHSIG, SIGTERM)`` between ``fork`` and ``exec``
  (what Ray does for its own daemons). The supervisor then kills its whole
  tree with ``SIGKILL`` and exits. It is a *child subreaper*
  (``PR_SET_CHILD_SUBREAPER``): the processes its descendants started and
  left behind (Flower starts a SuperLink's SuperExec in a session of its
  own; a SuperExec starts ``flwr-serverapp`` / ``flwr-clientapp``) stay in
  its tree when their parents die, so none escapes, and it reaps them. The
  command itself also gets ``PR_SET_PDEATHSIG`` (``death_signal``): killed
  when the supervisor dies, should it be killed alone. The signal comes when
  the *thread* that forked ends, not the process: start children from the
  main thread (:func:`start_child` warns otherwise).
- **The command ends** by itself: the supervisor kills what it left running
  and exits with its status (killed by the same signal, if it was).
- **Someone signals the supervisor** (``SIGTERM``, ``SIGINT``, ``SIGHUP``,
  ``SIGQUIT``) while the parent lives: it passes the signal on to the command.
- **The parent ends gracefully** (returns, ``sys.exit``, an exception,
  ``KeyboardInterrupt``): an ``atexit`` hook kills every child still running
  with its whole tree (:func:`kill_tree`).
- **The parent gets** ``SIGTERM``: Python's default ends it at once (no
  ``atexit``), which the kernel answers as above. A CLI that should clean up
  first (Ray's daemons, a run directory) enters :func:`sigterm_exits`, which
  turns ``SIGTERM`` into ``SystemExit`` as ``Ctrl-C`` is ``KeyboardInterrupt``.

Each child (its supervisor) leads its own session and process group
(``start_new_session``), so a terminal's ``Ctrl-C`` reaches only the parent,
which then ends the children as above. The :class:`subprocess.Popen` has the
supervisor's ``pid`` and the command as ``args``.

Other OSes have neither signal: there the command runs without a
supervisor and only the ``atexit`` hook applies (a parent killed by
``SIGKILL`` leaves its children running), and :func:`descendants` asks
``ps`` instead of reading ``/proc``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import errno
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
LINUX = sys.platform.startswith("linux")
PASSED_ON = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT)

_children: list[subprocess.Popen] = []
_lock = threading.Lock()
_hooked = False


def start_child(
    args: Sequence[str],
    death_signal: int = signal.SIGKILL,
    supervise: bool = True,
    **popen_kwargs: Any,
) -> subprocess.Popen:
    """``subprocess.Popen(args, **popen_kwargs)`` of a child that ends with us.

    Linux: the command runs under a supervisor that kills its whole tree
    when this thread ends (the module's docstring); the command gets
    ``death_signal`` if the supervisor dies first. Everywhere: the child
    leads its own session (``start_new_session=True`` unless given), and at
    this interpreter's exit :func:`kill_tree` ends it with its descendants if
    it still runs. A missing command raises :class:`FileNotFoundError` here,
    as ``Popen`` does. A caller's ``preexec_fn`` runs in the supervisor.

    ``supervise=False``: no supervisor, the command itself gets
    ``death_signal`` when this thread ends (Linux), and ``pid`` is its own;
    what it starts is left to it.
    """
    if threading.current_thread() is not threading.main_thread():
        warnings.warn(
            "start_child from a thread other than the main one: the child is "
            "killed when this thread ends",
            RuntimeWarning,
            stacklevel=2,
        )
    args = [os.fspath(a) for a in args]
    popen_kwargs.setdefault("start_new_session", True)
    if not LINUX:
        p = subprocess.Popen(args, **popen_kwargs)
    elif not supervise:
        popen_kwargs["preexec_fn"] = _die_with_parent(
            death_signal, popen_kwargs.get("preexec_fn")
        )
        p = subprocess.Popen(args, **popen_kwargs)
    else:
        if popen_kwargs.get("shell") or "executable" in popen_kwargs:
            raise ValueError("start_child runs a command list: no shell, executable")
        if os.sep not in args[0]:
            env = popen_kwargs.get("env") or os.environ
            if shutil.which(args[0], path=env.get("PATH", os.defpath)) is None:
                raise FileNotFoundError(
                    errno.ENOENT, os.strerror(errno.ENOENT), args[0]
                )
        popen_kwargs["preexec_fn"] = _die_with_parent(
            signal.SIGTERM, popen_kwargs.get("preexec_fn")
        )
        supervisor = [sys.executable, "-P", __file__, str(os.getpid())]
        p = subprocess.Popen(
            [*supervisor, str(int(death_signal)), "--", *args], **popen_kwargs
        )
        p.args = args
    _register(p)
    return p


def _prctl() -> Callable[[int, int], int]:
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


def _die_with_parent(sig: int, then: Callable[[], Any] | None) -> Callable[[], None]:
    """The ``preexec_fn``: ``prctl(PR_SET_PDEATHSIG, sig)`` in the forked child.

    ``prctl`` is looked up here, in the parent, so that the child (where
    another thread of the parent may have held a lock at the ``fork``) only
    calls it. A parent that died before the ``prctl`` (a race) is caught:
    the child then kills itself.
    """
    prctl = _prctl()
    parent = os.getpid()

    def preexec() -> None:
        if prctl(PR_SET_PDEATHSIG, int(sig)) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGKILL)
        if then is not None:
            then()

    return preexec


def _supervise(parent: int, death_signal: int, args: list[str]) -> None:
    """Run ``args`` and wait; end its whole tree when it or ``parent`` ends.

    Started by :func:`start_child` with ``PR_SET_PDEATHSIG = SIGTERM``: a
    ``SIGTERM`` that finds another parent than ``parent`` means the parent
    died. Never returns.
    """
    me, prctl, child = os.getpid(), _prctl(), 0
    prctl(PR_SET_CHILD_SUBREAPER, 1)

    def on_signal(signum: int, _frame: Any) -> None:
        if os.getppid() != parent:  # the parent died: nothing of ours stays
            _kill_descendants(me, reap=False)
            os._exit(128 + signum)
        if child:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signum)

    for s in PASSED_ON:
        signal.signal(s, on_signal)
    if os.getppid() != parent:  # it died before these handlers
        os._exit(128 + signal.SIGTERM)
    child = os.fork()
    if child == 0:
        try:
            # as Popen's restore_signals: Python ignores SIGPIPE and SIGXFSZ
            for s in (*PASSED_ON, signal.SIGPIPE, signal.SIGXFSZ):
                signal.signal(s, signal.SIG_DFL)
            prctl(PR_SET_PDEATHSIG, death_signal)
            if os.getppid() == me:
                os.execvp(args[0], args)
        finally:
            os._exit(127)
    while True:  # also reaps the orphans this subreaper adopts
        pid, status = os.waitpid(-1, 0)
        if pid == child:
            break
    _kill_descendants(me, reap=True)
    if os.WIFSIGNALED(status):  # end as the command did
        import resource

        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(os.WTERMSIG(status), signal.SIG_DFL)
        os.kill(me, os.WTERMSIG(status))
    os._exit(os.waitstatus_to_exitcode(status))


def _kill_descendants(pid: int, reap: bool) -> None:
    """``SIGKILL`` ``pid``'s descendants until none runs (at most 5 s).

    Again and again: one may have started another meanwhile. ``reap``:
    collect the dead among ``pid``'s children (``pid`` is this process).
    """
    end = time.monotonic() + 5
    while time.monotonic() < end:
        if reap:
            with contextlib.suppress(ChildProcessError):
                while os.waitpid(-1, os.WNOHANG)[0]:
                    pass
        tree = [q for q in descendants(pid) if _state(q) not in ("Z", "X", "")]
        if not tree:
            return
        for q in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(q, signal.SIGKILL)
        time.sleep(0.02)


def _state(pid: int) -> str:
    """``pid``'s state letter (``R``, ``S``, …, ``Z`` a zombie); ``""`` if gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def _register(p: subprocess.Popen) -> None:
    global _hooked
    with _lock:
        _children[:] = [c for c in _children if c.poll() is None]
        _children.append(p)
        if not _hooked:
            atexit.register(kill_children)
            _hooked = True


def kill_children() -> None:
    """Kill every child of :func:`start_child` still running, with its tree."""
    with _lock:
        children, _children[:] = list(_children), []
    for p in children:
        if p.poll() is None:
            kill_tree(p)


def descendants(pid: int) -> list[int]:
    """The pids of ``pid``'s children, their children, …: parents first."""
    children: dict[int, list[int]] = {}
    for child, parent in _parents():
        children.setdefault(parent, []).append(child)
    found, todo = [], [pid]
    while todo:
        kids = children.get(todo.pop(0), [])
        found += kids
        todo += kids
    return found


def _parents() -> Iterable[tuple[int, int]]:
    """``(pid, parent pid)`` of every process (``/proc`` on Linux, else ``ps``)."""
    if LINUX:
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    with open(f"/proc/{entry}/stat") as f:
                        # "pid (comm) state ppid …": comm may hold spaces and ")"
                        yield int(entry), int(f.read().rsplit(")", 1)[1].split()[1])
        return
    ps = subprocess.run(
        ["ps", "-A", "-o", "pid=,ppid="], capture_output=True, text=True
    )
    for line in ps.stdout.splitlines():
        pid, ppid = line.split()
        yield int(pid), int(ppid)


def kill_tree(
    p: subprocess.Popen | int, sig: int = signal.SIGKILL, timeout: float = 30
) -> None:
    """Send ``sig`` to ``p``, its process group (if it leads one) and descendants.

    The descendants are listed before anything is killed (a killed process's
    children are re-parented away from it). A :class:`subprocess.Popen` is
    then waited for (reaped), at most ``timeout`` seconds.
    """
    pid = p if isinstance(p, int) else p.pid
    tree = descendants(pid)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
    for q in [pid, *tree]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(q, sig)
    if isinstance(p, subprocess.Popen):
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=timeout)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """Inside, ``SIGTERM`` raises ``SystemExit(143)`` (128 + 15, a shell's code).

    So ``finally`` blocks, context managers and ``atexit`` hooks run, as on
    ``Ctrl-C``: Flower's simulation shuts Ray down, :func:`kill_children`
    ends the children. Only the main thread can set a handler: elsewhere this
    does nothing. The previous handler is back on leaving.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def exit_(signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM kills
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, exit_)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # the supervisor: PARENT DEATH_SIGNAL -- COMMAND…
    _supervise(int(sys.argv[1]), int(sys.argv[2]), sys.argv[4:])
