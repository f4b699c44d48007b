"""Fork server: a process that has already imported the model server and forks a
fresh replica from itself on request.

A new interpreter spends a few hundred milliseconds importing grpc and the server
before a replica can even bind; a fork of a process that paid for the imports once
starts in a few milliseconds, which is what makes waking a scaled-to-zero deployment
fast. The server is single-threaded and never touches grpc itself, so forking it is
safe. Protocol: one JSON line per connection, {"argv", "env", "log", "name"} (and
"uid", "gid", "cwd" for a replica that runs as another user: the child drops to it
after opening its log, so the log need not be reachable by that user), answered
by {"pid"}; the connection then stays open until the server reaps that replica and
sends {"exit": CODE} (negative: the signal that killed it), so the controller learns
how a replica it did not fork itself ended. A client that closes its end early (a
controller that restarted and adopted the replica) just gets nothing.

The server lives as long as the controller that started it: it watches the read end
of a pipe whose write end only that controller holds (--lifeline-fd), and exits when
the pipe reports end of file, which the kernel guarantees on any death of the
controller, SIGKILL included. (PR_SET_PDEATHSIG would tie it to the *thread* that
started it, and has a race with a parent dying before the call.) Replicas are not
tied to it: they outlive a dead controller so that the next one adopts them.

    python -m replica.forkserver --socket PATH --lifeline-fd FD
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import selectors
import signal
import socket
import sys
import traceback

import replica.direct_http  # noqa: F401  (its HTTP route, which a new interpreter imports while loading)
import replica.main  # noqa: F401  (the point: import everything a replica needs, once)

PR_SET_NAME = 15
PR_SET_PDEATHSIG = 1
# Blocked across fork(): CPython drops signals that reach a child before os.fork()
# returns in it, so a replica stopped right after it was spawned would never exit.
# Blocked, they stay pending until the child has its own handlers.
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


def _set_process_name(name: str) -> None:
    """Shown in /proc/PID/comm, so a controller can recognise the replica after a restart."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _become_replica(request: dict, server_descriptors: list[socket.socket | selectors.BaseSelector | int]) -> None:
    """In the forked child: drop the server's descriptors (a replica holding another's
    connection would hide that one's end from the controller), detach, redirect output,
    run the replica, never return."""
    code = 1
    try:
        signal.set_wakeup_fd(-1)
        for resource in server_descriptors:
            if isinstance(resource, int):
                os.close(resource)
            else:
                resource.close()
        os.setsid()
        if request.get("die_with_server"):
            # A replica of the Ray runtime's node-local server goes when the server goes (its
            # owning actor died, or its node): killed by the kernel, or now if that already happened.
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
            if os.getppid() != request["server_pid"]:
                os._exit(1)
        for signum in (signal.SIGCHLD, *STOP_SIGNALS):
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a pending stop ends it here
        _set_process_name(request.get("name", "replica"))
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        if "uid" in request:
            _drop_privileges(request["uid"], request["gid"], request["cwd"])
            if request.get("die_with_server"):
                # A change of user clears the parent-death signal: set it again, as that user.
                ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                if os.getppid() != request["server_pid"]:
                    os._exit(1)
        os.environ.update(request.get("env", {}))
        code = replica.main.main(request["argv"])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _drop_privileges(uid: int, gid: int, cwd: str) -> None:
    """Become `uid`:`gid` with no supplementary groups, for good (real, effective and saved IDs)."""
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    os.chdir(cwd)


SERVER_NAME = "slipway-forksrv"


class Server:
    """The server's loop: spawn on request, report exits, stop when the controller is gone."""

    def __init__(self, listener: socket.socket, lifeline_fd: int) -> None:
        self.listener = listener
        self.lifeline_fd = lifeline_fd
        # SIGCHLD only wakes the loop (through this pipe); replicas are reaped in the loop.
        self.child_exited, wakeup = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.set_wakeup_fd(wakeup, warn_on_full_buffer=False)
        self.selector = selectors.DefaultSelector()
        for fd in (listener, lifeline_fd, self.child_exited):
            self.selector.register(fd, selectors.EVENT_READ)
        self.descriptors: list[socket.socket | selectors.BaseSelector | int] = [
            listener,
            self.selector,
            lifeline_fd,
            self.child_exited,
            wakeup,
        ]
        self.waiting: dict[int, socket.socket] = {}  # replica PID -> connection its exit goes to

    def run(self) -> None:
        """Serve until the controller is gone."""
        while True:
            for key, _ in self.selector.select():
                if key.fileobj == self.lifeline_fd:
                    return
                if key.fileobj == self.child_exited:
                    self._reap()
                else:
                    self._spawn()

    def _spawn(self) -> None:
        connection, _ = self.listener.accept()
        try:
            with connection.makefile("rb") as stream:
                request = json.loads(stream.readline())
        except ValueError:
            connection.close()  # a client that went away before asking; serve the next one
            return
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        request["server_pid"] = os.getpid()
        pid = os.fork()
        if pid == 0:
            _become_replica(request, [*self.descriptors, connection, *self.waiting.values()])
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        try:
            connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        except OSError:  # the client went away: nobody to tell how this replica ends
            connection.close()
            return
        self.waiting[pid] = connection

    def _reap(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self.child_exited, 512):
                pass
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            connection = self.waiting.pop(pid, None)
            if connection is not None:
                with connection, contextlib.suppress(OSError):  # the client may have gone
                    connection.sendall(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode() + b"\n")


def serve(socket_path: str, lifeline_fd: int) -> None:
    _set_process_name(SERVER_NAME)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    bound = os.stat(socket_path).st_ino
    listener.listen(64)
    try:
        Server(listener, lifeline_fd).run()
    finally:
        # Only our own socket: a new controller may have put its fork server's at this path.
        with contextlib.suppress(OSError):
            if os.stat(socket_path).st_ino == bound:
                os.unlink(socket_path)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m replica.forkserver", description=__doc__)
    parser.add_argument("--socket", required=True)
    parser.add_argument(
        "--lifeline-fd", type=int, required=True, help="read end of a pipe: the server exits at its end of file"
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    serve(args.socket, args.lifeline_fd)


if __name__ == "__main__":
    main()
