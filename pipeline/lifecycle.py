"""How a worker process ends when the cluster ends it: preemption signals and a lost agent.

**Preemption.** Kubernetes and Slurm send SIGTERM before they kill a job (torchrun's agent
forwards it to every worker and SIGKILLs them 30 s later); Slurm's ``--signal=USR1@T`` sends
SIGUSR1 T seconds before the time limit. :class:`StopRequest` turns either signal into a request
that the train loop reads at a step boundary; the ranks agree through one all-reduce (any rank
may get the signal first, or alone), save a checkpoint at the step where they agree and exit 0.
Between steps the all-reduce runs in the background (:meth:`StopRequest.poll`): a check started
after step k is read after step k+1, so no step waits on it, and the ranks stop one step later.

**A lost agent.** When the torchrun agent dies without stopping its workers (SIGKILL, OOM
killer), they would go on training and publishing checkpoints as orphans of PID 1.
:func:`watch_parent` polls the parent pid and ends this process within ``poll_s`` once it
changes, without saving: a save in progress stays an unpublished ``.tmp-`` directory. One
exception: a worker that already got a stop signal is saving on purpose (Slurm signals every
process of a step at once, and an agent signalled twice may exit before its workers); it gets
:data:`SAVE_GRACE_S` from the signal to finish and exit by itself.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Callable, Optional

import torch

from fusionrec.errors import print_line, rank_prefix
from fusionrec.pipeline.distributed import all_reduce, all_reduce_async

STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
#: after a stop signal, how long a worker that lost its agent may still take to finish its save
#: (torchrun's own grace is 30 s)
SAVE_GRACE_S = 25.0
_signalled_at: Optional[float] = None  # when this process got a stop signal (monotonic clock)


class StopRequest:
    """SIGTERM / SIGUSR1 handlers that only record the signal; :meth:`agreed` (blocking) and
    :meth:`poll` / :meth:`settle` (one step behind, in the background) are the collectives that
    tell every rank whether any rank got one."""

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict[int, object] = {}
        self._pending: Optional[Callable[[], torch.Tensor]] = None

    def _handle(self, signum: int, frame: object) -> None:
        global _signalled_at
        if not self.received:
            self.received = signum
            _signalled_at = time.monotonic()

    def install(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def agreed(self) -> int:
        """Collective (every rank calls it at the same step): the signal number that some rank
        received (the highest, if several), or 0."""
        return int(all_reduce(self._flag(), op=torch.distributed.ReduceOp.MAX))

    def poll(self) -> int:
        """Collective, without a wait at this step: what the previous ``poll`` found (the signal
        some rank had received by then, or 0; 0 at the first), and a new check started in the
        background. Every rank calls it at the same steps, and :meth:`settle` before any other
        exchange that must not run behind it ends (an evaluation, the end of training)."""
        found = self.settle()
        self._pending = all_reduce_async(self._flag(), op=torch.distributed.ReduceOp.MAX)
        return found

    def settle(self) -> int:
        """Collective: wait for the check :meth:`poll` left running; its signal, or 0 (also when
        none is running)."""
        pending, self._pending = self._pending, None
        return int(pending()) if pending is not None else 0

    def _flag(self) -> torch.Tensor:
        return torch.tensor([self.received], dtype=torch.int64)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


def under_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ


class ParentWatch:
    """The thread of :func:`watch_parent`; :meth:`stop` ends and joins it (the job's last step),
    so no thread of fusionrec's own is alive when the interpreter tears down."""

    def __init__(self, parent: int, poll_s: float) -> None:
        self.parent, self.poll_s = parent, poll_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="fusionrec-parent-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while os.getppid() == self.parent:
            if self._stopped.wait(self.poll_s):
                return
        if _signalled_at is not None:  # stopping anyway: let the agreed save finish
            if self._stopped.wait(max(0.0, _signalled_at + SAVE_GRACE_S - time.monotonic())):
                return
        _agent_gone(self.parent)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join()


def _agent_gone(parent: int) -> None:
    print_line(f"error: {rank_prefix()}the torchrun agent (pid {parent}) is gone; stopping without saving")
    # Immediately, from this thread: the main thread may be inside a collective that waits for
    # ranks that are gone. Nothing is lost that a clean exit would keep: an unpublished save
    # stays a .tmp- directory (docs/reliability.md).
    os._exit(1)


def watch_parent(poll_s: float = 0.5) -> Optional[ParentWatch]:
    """Under torchrun, end this process (exit 1, one line on stderr) within ``poll_s`` seconds of
    its parent, the torchrun agent, going away; returns the watch (None outside torchrun).

    A poll and not ``prctl(PR_SET_PDEATHSIG)``: the death signal fires when the parent *thread*
    that forked the worker exits, not the agent process, and it cannot say why the worker stopped."""
    if not under_torchrun():
        return None
    parent = os.getppid()
    if parent == 1:  # the agent died before this worker got here
        _agent_gone(parent)
    return ParentWatch(parent, poll_s)
