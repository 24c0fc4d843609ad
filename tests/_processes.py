"""Forked children for the tests of saves and training that die: the child runs a function and never
returns into pytest; the fault-injection variable of course_lib.checkpoints can make it exit at the
N-th file operation of its saves."""

import os
import pickle

from course_lib import checkpoints


def fork(function, fault_at: int | None = None) -> int:
    """Run ``function`` in a forked child (exit status 0, or 1 if it raised); return the child's pid."""
    pid = os.fork()
    if pid == 0:
        status = 0
        try:
            checkpoints._operations = 0
            if fault_at is not None:
                os.environ[checkpoints.FAULT_ENVIRONMENT_VARIABLE] = str(fault_at)
            function()
        except BaseException:  # noqa: BLE001 - the child reports by its exit status
            status = 1
        os._exit(status)
    return pid


def exit_status(pid: int) -> int:
    """Wait for child ``pid``: its exit code, or -N if signal N killed it."""
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def call_in_child(function) -> None:
    """Run ``function`` in a forked child (another process); raise here what it raised there."""
    read_end, write_end = os.pipe()

    def report():
        try:
            function()
            payload = b""
        except BaseException as error:  # noqa: BLE001 - sent to the parent
            payload = pickle.dumps(error)
        os.write(write_end, payload)

    pid = fork(report)
    os.close(write_end)
    payload = b"".join(iter(lambda: os.read(read_end, 65536), b""))
    os.close(read_end)
    exit_status(pid)
    if payload:
        raise pickle.loads(payload)
