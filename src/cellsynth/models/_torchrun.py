"""torchrun as ``cellsynth run`` starts it: torch's launcher (``torch.distributed.run``) whose
ends are said in one line, and which ends with the process that started it.

Run as ``python -m cellsynth.models._torchrun TORCHRUN-ARGUMENTS``. torch's launcher ends a stop
(SIGTERM, SIGINT: ``SignalException``) and a failed rank (``ChildFailedError`` and its box of
failures) with tracebacks of its own, which landed in the user's terminal under cellsynth's
one-line message; here each is one line (a rank's own message is printed above it by the
rank). And the launcher and its ranks end when their parent does
(:func:`die_with_parent`): a ``cellsynth run`` killed with SIGKILL (the out-of-memory killer,
a second Ctrl-C's kill) cannot stop its process group, and the ranks, each in a session of its
own, trained on, wrote their model into the run directory and removed the checkpoint the rerun
resumed from, beside the rerun's own ranks.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

#: the environment variable that gives the launcher its parent's pid (see :func:`main`)
PARENT_ENV = "CELLSYNTH_PARENT_PID"

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent(parent: int | None = None) -> None:
    """Have Linux send this process SIGTERM when its parent ends (``PR_SET_PDEATHSIG``);
    nothing elsewhere. ``parent``: the pid that should be the parent; when another is (it
    ended before this call), SIGTERM is sent at once."""
    if not sys.platform.startswith("linux"):
        return
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)
    except (OSError, AttributeError):  # no libc prctl: as elsewhere
        return
    if parent is not None and os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGTERM)


def _failure(rank: int, exitcode: int) -> str:
    """One line for the first rank that failed."""
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (often the out-of-memory killer: fewer cvae.nproc_per_node or a smaller " \
               "cvae.batch_size need less memory)" if -exitcode == signal.SIGKILL else ""
        return f"rank {rank} of the distributed CVAE training was killed by {name}{hint}"
    return (f"rank {rank} of the distributed CVAE training exited with status {exitcode}; "
            "its message is above")


def main(argv: list[str] | None = None) -> int:
    """Run torch's launcher with ``argv``; return its exit status (``128 + N`` when stopped by
    signal N, 1 when a rank failed)."""
    parent = os.environ.pop(PARENT_ENV, "")
    die_with_parent(int(parent) if parent.isdigit() else None)
    try:
        from torch.distributed.elastic.multiprocessing.api import SignalException
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.run import main as launch

        launch(argv)
    except KeyboardInterrupt:  # before the launcher's own handlers
        return 128 + int(signal.SIGINT)
    except SignalException as exc:  # stopped: the launcher has stopped its ranks
        return 128 + int(exc.sigval)
    except ChildFailedError as exc:
        rank, failure = exc.get_first_failure()
        print(f"torchrun: {_failure(rank, failure.exitcode)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
