"""Fork server: a process that has already imported the model server and forks a
fresh replica from itself on request.

A new interpreter spends a few hundred milliseconds importing grpc and the server
before a replica can even bind; a fork of a process that paid for the imports once
starts in a few milliseconds, which is what makes waking a scaled-to-zero deployment
fast. The server is single-threaded and never touches grpc itself, so forking it is
safe. Protocol: one JSON line per connection, {"argv", "env", "log", "name"}, answered
by {"pid"}. Children are reaped by the kernel (SIGCHLD ignored); whoever asked for a
replica watches it by PID.

    python -m replica.forkserver --socket PATH
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import signal
import socket
import sys
import traceback

import replica.main  # noqa: F401  (the point: import everything a replica needs, once)

PR_SET_NAME = 15
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


def _become_replica(request: dict) -> None:
    """In the forked child: detach, redirect output, run the replica, never return."""
    code = 1
    try:
        os.setsid()
        for signum in (signal.SIGCHLD, *STOP_SIGNALS):
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # a pending stop ends it here
        _set_process_name(request.get("name", "replica"))
        log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
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


SERVER_NAME = "slipway-forksrv"


def serve(socket_path: str) -> None:
    _set_process_name(SERVER_NAME)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    if os.path.exists(socket_path):
        os.unlink(socket_path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(socket_path)
    listener.listen(64)
    while True:
        connection, _ = listener.accept()
        with connection:
            try:
                request = json.loads(connection.makefile("rb").readline())
            except ValueError:
                continue  # a client that went away before asking; serve the next one
            signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
            pid = os.fork()
            if pid == 0:
                listener.close()
                connection.close()
                _become_replica(request)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            connection.sendall(json.dumps({"pid": pid}).encode() + b"\n")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m replica.forkserver", description=__doc__)
    parser.add_argument("--socket", required=True)
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve(args.socket)
    finally:
        if os.path.exists(args.socket):
            os.unlink(args.socket)


if __name__ == "__main__":
    main()
