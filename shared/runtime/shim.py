"""The per-container shim: parent of one container, so that it outlives its caller.

Run as a plain script (`python -S -I shim.py ...`), stdlib only and importing
as little as it can, because it sits on every container's start path. Like
conmon, it detaches (fork, setsid), becomes a child subreaper, starts the
container with `<runtime> run -d` holding the container's stdout/stderr pipes,
tells the caller the container's pid over an inherited pipe, then copies the
output into a docker json-file log, reaps the container, records its exit in
`exit.json` (atomically) and deletes it from the runtime.

argv: SYNC_FD [--stdio=IN,OUT,ERR --hold=FD,... | --console=SOCKET] ID BUNDLE LOG_PATH STATE_DIR
MEMORY_CGROUP_DIR|- RUNTIME_ARGV... (the options: an interactive container's stdio is the
caller's, see stdio.py; the shim then writes no log).
The caller reads one line from SYNC_FD: `ok <container pid> <shim pid>` or
`error <message>`; EOF without a line means the shim died (see shim.log).
After `ok` the pipe stays open: once the exit is recorded in exit.json the shim
writes `exit <code>`, so a caller still listening learns of the exit before the
runtime's `delete` and the shim's own exit (a restarted caller waits on the shim).

A spare (`--spare CTL_FD SYNC_FD`) starts the same way, then waits for its
arguments (ID BUNDLE ... RUNTIME_ARGV, NUL-separated, one line) on CTL_FD: the
caller keeps one ready so that a start does not wait for Python to boot. EOF on
CTL_FD (the caller is gone or does not need it) ends the spare.
"""

import os
import select
import sys
import time

_PR_SET_CHILD_SUBREAPER = 36
_PARTIAL_LINE_MAX = 16 * 1024  # docker's json-file splits longer lines too
_CHUNK = 64 * 1024


def main(argv):
    if argv[1] == "--spare":
        ctl_fd, sync_fd = int(argv[2]), int(argv[3])
        args = None
    else:
        ctl_fd, sync_fd = -1, int(argv[1])
        args = argv[2:]
    for fd in (sync_fd, ctl_fd):
        if fd >= 0:
            os.set_inheritable(fd, False)  # never let the container hold the caller's pipes
    if os.fork():
        os._exit(0)  # the caller reaps this at once; the grandchild lives on under init
    os.setsid()
    _set_subreaper()
    if args is None:
        args = _wait_for_work(ctl_fd)
        if args is None:
            return 0  # not needed after all
    stdio, console, held, ack, args = _options(args)
    cid, bundle, log_path, state_dir, memcg = args[:5]
    runtime = args[5:]
    try:
        # Opened before the start, so that a caller finds the log once started.
        log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o640)
    except OSError as e:
        _report(sync_fd, "error cannot open log %s: %s" % (log_path, e.strerror))
        return 1
    try:
        listener = _console_listener(console) if console else None
        pid, out_r, err_r = _start(cid, bundle, state_dir, runtime, stdio, console)
        if listener is not None:
            held = held + (_receive_console(listener),)
    except (_StartError, OSError) as e:
        _report(sync_fd, "error " + str(e).replace("\n", " "))
        return 1
    started_at = _now()
    # `held`: the caller's ends of an interactive container's stdio (its pty master, its
    # output pipes), kept open here so that they outlive the caller; a restarted caller
    # takes copies with pidfd_getfd.
    _atomic_write(os.path.join(state_dir, "shim.json"),
                  '{"pid": %d, "pid_start": %d, "shim_pid": %d, "shim_start": %d, "started_at": "%s", '
                  '"held": [%s]}'
                  % (pid, _start_ticks(pid), os.getpid(), _start_ticks(os.getpid()), started_at,
                     ", ".join(map(str, held))))
    try:
        _report(sync_fd, "ok %d %d" % (pid, os.getpid()), close=False)
    except OSError:
        pass  # the caller died meanwhile: the container is ours to keep all the same
    if stdio is None:
        _copy_logs(log, out_r, err_r)
    else:
        os.close(log)  # the caller holds the container's output and writes the log
    status = _reap(pid)
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        code = 128 - code  # killed by a signal: docker's convention (KILL -> 137)
    oom = memcg != "-" and _oom_kills(memcg) > 0
    _atomic_write(os.path.join(state_dir, "exit.json"),
                  '{"pid": %d, "exit_code": %d, "oom_killed": %s, "started_at": "%s", "finished_at": "%s"}'
                  % (pid, code, "true" if oom else "false", started_at, _now()))
    try:
        _report(sync_fd, "exit %d" % code)
    except OSError:
        pass  # the caller restarted since: it waits on our pid instead
    _run(runtime + ["delete", "--force", cid])
    if ack >= 0:
        _await_ack(ack)  # the pty master closes with us: not before the caller has its copy
    return 0


def _await_ack(fd, timeout=5.0):
    """Until the caller closes its end of the ack pipe (it has taken what we hold, or died)."""
    try:
        select.select([fd], [], [], timeout)
    except OSError:
        pass


def _wait_for_work(ctl_fd):
    """A spare's arguments from the caller; None on EOF. Its stderr then goes to shim.log."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = os.read(ctl_fd, 65536)
        if not chunk:
            return None
        buf += chunk
    os.close(ctl_fd)
    args = [a.decode("utf-8", "surrogateescape") for a in buf[:-1].split(b"\0")]
    err = os.open(os.path.join(args[3], "shim.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    os.dup2(err, 2)
    os.close(err)
    return args


class _StartError(Exception):
    pass


def _options(args):
    """Leading `--stdio=IN,OUT,ERR` (the container's pipe ends, inherited), `--hold=FD,...`
    (the caller's ends, inherited, kept open) or `--console=SOCKET` (a path to listen on),
    and `--ack=FD` (inherited: its EOF tells that the caller has taken copies of `held`)."""
    stdio, console, held, ack = None, "", (), -1
    while args and args[0].startswith("--"):
        opt, _, value = args.pop(0).partition("=")
        if opt == "--stdio":
            stdio = tuple(int(fd) for fd in value.split(","))
        elif opt == "--hold":
            held = tuple(int(fd) for fd in value.split(","))
        elif opt == "--console":
            console = value
        elif opt == "--ack":
            ack = int(value)
    for fd in (*(stdio or ()), *held, *((ack,) if ack >= 0 else ())):
        os.set_inheritable(fd, False)  # the runtime gets the stdio as its 0, 1, 2; the rest nobody
    return stdio, console, held, ack, args


def _console_listener(path):
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    s.bind(path)
    s.listen(1)
    return s


def _receive_console(listener):
    """The pty master the runtime sent during `run -d` (it waits in the backlog till then)."""
    import socket
    listener.settimeout(10)
    try:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(10)
            _, fds, _, _ = socket.recv_fds(conn, 4096, 1, socket.MSG_CMSG_CLOEXEC)
    except OSError as e:
        raise _StartError("no terminal from the runtime: %s" % e)
    finally:
        listener.close()
    if not fds:
        raise _StartError("the runtime sent no terminal")
    return fds[0]


def _set_subreaper():
    import ctypes  # only here: ~3 ms, and nothing else needs it
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _start(cid, bundle, state_dir, runtime, stdio=None, console=""):
    """`run -d` with new pipes as the container's stdio: its pid and the read ends.

    With `stdio` the caller's fds are the container's stdio instead (the read ends
    returned are then None); with `console` the runtime sends a pty master there, and the
    pipes carry only the runtime's own messages."""
    pid_file = os.path.join(state_dir, "container.pid")
    extra = ["--console-socket", console] if console else []
    if stdio is not None:
        out_r = err_r = None
        in_fd, out_w, err_w = stdio
    else:
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        in_fd = os.open(os.devnull, os.O_RDONLY)
    try:
        rt = os.posix_spawnp(runtime[0], runtime + ["run", "-d", "--pid-file", pid_file, *extra,
                                                    "--bundle", bundle, cid], os.environ,
                             file_actions=[(os.POSIX_SPAWN_DUP2, in_fd, 0),
                                           (os.POSIX_SPAWN_DUP2, out_w, 1),
                                           (os.POSIX_SPAWN_DUP2, err_w, 2)])
    finally:
        os.close(out_w)
        os.close(err_w)
        os.close(in_fd)
    _, status = os.waitpid(rt, 0)
    if status != 0:
        # Before the container exists only the runtime writes: its error is all there is.
        msg = b""
        for fd in (err_r, out_r):
            if fd is None:
                continue  # the runtime's message went to the caller's stderr pipe
            os.set_blocking(fd, False)
            try:
                msg += os.read(fd, _CHUNK)
            except BlockingIOError:
                pass
        _run(runtime + ["delete", "--force", cid])
        raise _StartError("%s run failed (exit %d): %s" % (
            os.path.basename(runtime[-1]), os.waitstatus_to_exitcode(status),
            msg.decode(errors="replace").strip()[-2000:]))
    with open(pid_file) as f:
        pid = int(f.read().strip())
    return pid, out_r, err_r


def _copy_logs(log, out_r, err_r):
    """Copy both pipes into docker json-file lines until the container closes them."""
    from _json import encode_basestring  # the C encoder: `import json` costs 6 ms of `re`
    streams = {out_r: ("stdout", bytearray()), err_r: ("stderr", bytearray())}
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    while streams:
        for fd, _ev in poller.poll():
            data = os.read(fd, _CHUNK)
            name, buf = streams[fd]
            if data:
                buf += data
                lines = _take_lines(buf, final=False)
            else:
                lines = _take_lines(buf, final=True)
                poller.unregister(fd)
                os.close(fd)
                del streams[fd]
            if lines:
                ts = _now()
                os.write(log, b"".join(
                    ('{"log":%s,"stream":"%s","time":"%s"}\n'
                     % (encode_basestring(line.decode(errors="replace")), name, ts)).encode()
                    for line in lines))
    os.close(log)


def _take_lines(buf, final):
    """Complete lines out of `buf` (kept with their newline); long or final rests too."""
    lines = []
    start = 0
    while True:
        nl = buf.find(b"\n", start)
        if nl < 0:
            break
        lines.append(bytes(buf[start:nl + 1]))
        start = nl + 1
    rest = len(buf) - start
    if rest and (final or rest >= _PARTIAL_LINE_MAX):
        lines.append(bytes(buf[start:]))
        start = len(buf)
    del buf[:start]
    return lines


def _reap(pid):
    """Reap children (the container and any orphan handed to us) until `pid` is."""
    while True:
        try:
            got, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return 255 << 8  # someone else reaped it: the exit status is lost
        if got == pid:
            return status


def _oom_kills(memcg):
    try:
        with open(os.path.join(memcg, "memory.oom_control")) as f:
            for line in f:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except OSError:
        pass
    return 0


def _start_ticks(pid):
    """Process start time (clock ticks since boot): with the pid, a unique identity."""
    with open("/proc/%d/stat" % pid, "rb") as f:
        stat = f.read()
    return int(stat[stat.rindex(b")") + 2:].split()[19])


def _run(argv):
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        pid = os.posix_spawnp(argv[0], argv, os.environ,
                              file_actions=[(os.POSIX_SPAWN_DUP2, devnull, fd) for fd in (0, 1, 2)])
    finally:
        os.close(devnull)
    return os.waitpid(pid, 0)[1]


def _report(fd, line, close=True):
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        if close:
            os.close(fd)


def _atomic_write(path, text):
    # No fsync: the state dir lives on tmpfs (/run) and a container does not
    # survive a host crash anyway; rename keeps readers from seeing half a file.
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, path)


def _now():
    """RFC 3339 with nanoseconds in UTC, trailing zeros trimmed (Go's RFC3339Nano)."""
    ns = time.time_ns()
    secs, frac = divmod(ns, 1_000_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs))
    frac_s = ("%09d" % frac).rstrip("0")
    return stamp + ("." + frac_s if frac_s else "") + "Z"


if __name__ == "__main__":
    sys.exit(main(sys.argv))
