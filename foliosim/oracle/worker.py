"""Scenario tasks as real processes: each task is a forked Python process that runs a small
command loop (mmap, munmap, mprotect, madvise, mremap, touch, fork, exit) sent by the
controller over an AF_UNIX connection. A scenario `fork` forks the task process itself, so
the child shares the parent's memory exactly as the kernel's fork leaves it; the child then
connects back to the controller's listener.

Touches are real loads and stores of one byte per page. The controller checks beforehand,
from /proc (maps, map_files, pagemap guard bits), how far a touch can go, so the task never
takes SIGSEGV/SIGBUS; if it dies anyway, the controller reports the signal that killed it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import signal
import time
from dataclasses import dataclass
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from foliosim.oracle import libc

PAGE = 4096


def _serve(conn: Connection, address: str) -> None:
    """The command loop of one task process; never returns."""
    while True:
        try:
            cmd = conn.recv()
        except (EOFError, OSError):
            os._exit(0)
        op = cmd[0]
        reply: Any = None
        try:
            if op == "mmap":
                _, addr, length, prot, flags, path, off = cmd
                fd = -1
                if path is not None:
                    mode = os.O_RDWR if prot & 2 or flags & libc.MAP_PRIVATE else os.O_RDONLY
                    fd = os.open(path, mode)
                try:
                    reply = ("ok", libc.mmap(addr, length, prot, flags, fd, off))
                finally:
                    if fd >= 0:
                        os.close(fd)
            elif op == "munmap":
                libc.munmap(cmd[1], cmd[2])
                reply = ("ok", None)
            elif op == "mprotect":
                libc.mprotect(cmd[1], cmd[2], cmd[3])
                reply = ("ok", None)
            elif op == "madvise":
                libc.madvise(cmd[1], cmd[2], cmd[3])
                reply = ("ok", None)
            elif op == "mremap":
                reply = ("ok", libc.mremap(cmd[1], cmd[2], cmd[3], cmd[4], cmd[5]))
            elif op == "touch":
                _, start, end, write = cmd
                addr = start & ~(PAGE - 1)
                while addr < end:
                    if write:
                        libc.touch_write(addr)
                    else:
                        libc.touch_read(addr)
                    addr += PAGE
                reply = ("ok", None)
            elif op == "fork":
                pid = os.fork()
                if pid == 0:
                    conn.close()
                    child = Client(address, family="AF_UNIX")
                    child.send(("hello", os.getpid()))
                    _serve(child, address)
                reply = ("ok", pid)
            elif op == "exit":
                conn.send(("ok", None))
                os._exit(0)
            elif op == "ping":
                reply = ("ok", os.getpid())
        except libc.SysError as exc:
            reply = ("err", exc.name)
        conn.send(reply)


@dataclass
class TaskProc:
    name: str
    pid: int
    conn: Connection
    dead: str | None = None  # why the process is gone (exit, or the signal that killed it)


class Workers:
    """The controller's side: start tasks, send them commands, reap them."""

    def __init__(self) -> None:
        self.listener = Listener(family="AF_UNIX")
        self.address = str(self.listener.address)
        self.tasks: dict[str, TaskProc] = {}
        libc.set_child_subreaper()

    def _accept(self, name: str, expect_pid: int) -> TaskProc:
        conn = self.listener.accept()
        hello = conn.recv()
        assert hello[0] == "hello" and hello[1] == expect_pid, hello
        task = TaskProc(name, expect_pid, conn)
        self.tasks[name] = task
        return task

    def new_task(self, name: str) -> TaskProc:
        gc.collect()
        pid = os.fork()
        if pid == 0:
            try:
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                self.listener.close()
                for t in self.tasks.values():
                    t.conn.close()
                conn = Client(self.address, family="AF_UNIX")
                conn.send(("hello", os.getpid()))
                _serve(conn, self.address)
            finally:
                os._exit(1)
        return self._accept(name, pid)

    def call(self, name: str, *cmd: Any) -> tuple[str, Any]:
        """Send a command; ("ok", value), ("err", ERRNO) or ("dead", SIGNAL)."""
        task = self.tasks[name]
        if task.dead is not None:
            return ("dead", task.dead)
        try:
            task.conn.send(cmd)
            reply: tuple[str, Any] = task.conn.recv()
        except (EOFError, OSError):
            task.dead = self._wait_gone(task.pid) or "died"
            return ("dead", task.dead)
        return reply

    def fork(self, parent: str, child: str) -> tuple[str, Any]:
        reply = self.call(parent, "fork")
        if reply[0] == "ok":
            self._accept(child, int(reply[1]))
        return reply

    def exit(self, name: str) -> None:
        task = self.tasks[name]
        if task.dead is None:
            self.call(name, "exit")
            task.conn.close()
            self._wait_gone(task.pid)
            task.dead = "exit"

    def _wait_gone(self, pid: int) -> str | None:
        """Wait until pid has released its memory (zombie or reaped); the killing signal."""
        for _ in range(2000):
            try:
                wpid, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                wpid, status = 0, 0
                if _state(pid) in (None, "Z"):
                    return None
            if wpid == pid:
                return signal.Signals(os.WTERMSIG(status)).name if os.WIFSIGNALED(status) else None
            time.sleep(0.005)
        return None

    def close(self) -> None:
        for task in self.tasks.values():
            if task.dead is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(task.pid, signal.SIGKILL)
                task.conn.close()
                task.dead = "killed"
        for task in self.tasks.values():
            with contextlib.suppress(ChildProcessError):
                os.waitpid(task.pid, 0)
        self.listener.close()


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None
