"""The layer's process, shut in where the kernel lets an ordinary user do it (Linux namespaces).

A layer runs as the user who runs derivcheck, so without more it could read the key that authenticates
the derivation cache and re-sign entries, write derivcheck's own files, and signal or trace derivcheck's
processes. Before the layer's process imports the user's code, :func:`shut_in` gives it

- a user and a mount namespace of its own, in which the derivation cache folder and the folder of the
  cache key are covered by an empty, private tmpfs, and derivcheck's package and rule catalogue are
  read-only;
- a PID namespace of its own, with its own ``/proc``: no process outside it (the supervisor, the judge,
  the worker server, a zygote) has a number it can signal or a ``/proc`` entry it can open;

then enters a second user namespace, so that the mounts above are locked (a mount namespace made by a
less privileged user namespace cannot take apart what it inherited, ``mount_namespaces(7)``).

This needs unprivileged user namespaces (most Linux distributions allow them; some turn them off, and
other systems have none). Where they are not available the check runs as before and the report cannot
say more than the docs do: ``DERIVCHECK_SANDBOX=require`` makes that an error (exit 2) instead, for a
gate that must not run untrusted code unconfined; ``DERIVCHECK_SANDBOX=0`` turns it off.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
from pathlib import Path

CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID = 0x00020000, 0x10000000, 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
_ST_TO_MS = {os.ST_NOSUID: MS_NOSUID, os.ST_NODEV: MS_NODEV, os.ST_NOEXEC: MS_NOEXEC, os.ST_NOATIME: MS_NOATIME,
             os.ST_NODIRATIME: MS_NODIRATIME, os.ST_RELATIME: MS_RELATIME} if hasattr(os, "ST_RELATIME") else {}
PR_SET_PDEATHSIG, PR_SET_DUMPABLE = 1, 4


class Unavailable(Exception):
    """The kernel would not shut the process in (the step and its errno in the message)."""


def wanted() -> str:
    """``DERIVCHECK_SANDBOX``: "auto" (the default: where available), "require", or "off"."""
    value = os.environ.get("DERIVCHECK_SANDBOX", "auto").strip().lower()
    return "off" if value in ("0", "off", "no", "false") else "require" if value == "require" else "auto"


def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _call(what: str, result: int) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise Unavailable(f"{what}: {os.strerror(err)} (errno {err})")


def _own_ids(uid: int, gid: int) -> None:
    """Map ``uid`` and ``gid`` (this process's, read before it entered: inside, unmapped, they read as
    65534) to themselves in the user namespace it has just entered."""
    try:
        with open("/proc/self/setgroups", "w") as fh:
            fh.write("deny")
        with open("/proc/self/uid_map", "w") as fh:
            fh.write(f"{uid} {uid} 1")
        with open("/proc/self/gid_map", "w") as fh:
            fh.write(f"{gid} {gid} 1")
    except OSError as exc:
        raise Unavailable(f"mapping the user in the new namespace: {exc}") from None


def _mount(libc, source, target, fstype, flags: int, data=None) -> None:
    enc = (lambda s: None if s is None else str(s).encode())
    _call(f"mount {target}", libc.mount(enc(source), enc(target), enc(fstype), ctypes.c_ulong(flags), enc(data)))


def shut_in(hidden: list[Path], readonly: list[Path], pids: bool = True) -> None:
    """Shut this process in (see the module doc), before it imports any user code; with ``pids``, it returns
    in a child: the caller's process waits for it and ends as it ends (see :func:`_pid_one`). Without, only
    its files are (a zygote's, whose forks shut themselves in again, with their own PID namespace).
    Raises Unavailable, with the process unchanged or only its files' view narrowed, if the kernel refuses."""
    if not sys.platform.startswith("linux"):
        raise Unavailable(f"namespaces are Linux's, and this is {sys.platform}")
    try:
        libc = _libc()
        libc.unshare, libc.mount, libc.prctl
    except (OSError, AttributeError) as exc:
        raise Unavailable(f"no C library to ask: {exc}") from None
    for d in hidden:  # made now if missing: else the layer could make one, and a key in it, that a later run trusts
        try:
            d.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError:
            pass
    ids = os.geteuid(), os.getegid()
    _call("unshare(user, mount)", libc.unshare(CLONE_NEWUSER | CLONE_NEWNS))
    _own_ids(*ids)
    _mount(libc, None, "/", None, MS_REC | MS_PRIVATE)  # nothing done here reaches the caller's mounts
    for d in dict.fromkeys(p.resolve() for p in hidden):
        if d.is_dir():
            _mount(libc, "derivcheck", d, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=700")
    for d in dict.fromkeys(p.resolve() for p in readonly):
        if d.is_dir():
            _mount(libc, d, d, None, MS_BIND | MS_REC)
            kept = sum(ms for st, ms in _ST_TO_MS.items() if os.statvfs(d).f_flag & st)  # flags it may not drop
            _mount(libc, None, d, None, MS_REMOUNT | MS_BIND | MS_RDONLY | kept)
    if pids:
        _call("unshare(pid)", libc.unshare(CLONE_NEWPID))
        _pid_one(libc)
    _call("unshare(user, mount) to lock", libc.unshare(CLONE_NEWUSER | CLONE_NEWNS))
    _own_ids(*ids)


def _pid_one(libc) -> None:
    """Start the new PID namespace and return in its second process, which runs the layer.

    Its first, PID 1, only waits: the kernel ignores the signals a namespace's first process sends itself
    (a layer's ``os.kill(os.getpid(), SIGSEGV)`` would be a no-op there, not the crash it is anywhere else),
    so the layer runs in the second. The first is killed with the caller's process (which the supervisor
    watches and kills), and every process of the namespace with it. The caller's process holds nothing,
    waits, and ends as the layer's process ended (its wait status, sent up a pipe by the first)."""
    read, write = os.pipe()
    first = os.fork()
    if first != 0:
        _hold_nothing_but(read)
        _, status = os.waitpid(first, 0)
        told = os.read(read, 16)
        _end_as(int(told) if told.strip().isdigit() else status)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:  # its own /proc: no entry of ours in it (a container may forbid it: then ours stay
        _mount(libc, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)  # unreadable, not_traceable)
    except Unavailable:
        pass
    layer = os.fork()
    if layer == 0:
        os.close(read)
        os.close(write)
        return
    _hold_nothing_but(write)
    _, status = os.waitpid(layer, 0)
    os.write(write, str(status).encode())
    os._exit(0)


def _hold_nothing_but(fd: int) -> None:
    """In a process that only waits: no descriptor but ``fd`` (the judge must see the layer's end of its pipe
    close when the layer's process ends), and the user's Ctrl-C left to the supervisor."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.closerange(3, fd)
    os.closerange(fd + 1, os.sysconf("SC_OPEN_MAX"))


def _end_as(status: int) -> None:
    """End this process as a process with wait status ``status`` ended: by its signal, or with its code."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    os._exit(code & 0xFF)


def not_traceable() -> None:
    """This process (a judge) may not be traced or have its memory read by a process of the same user that
    lacks the right to trace (a layer in its namespace): PR_SET_DUMPABLE 0."""
    try:
        _libc().prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass
