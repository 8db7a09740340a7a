"""How the stages tell one stop from two: the same signal this soon after the first is the same stop, not a
second one. Slurm (scancel, a time limit, preemption; ``scancel --signal=INT``) signals every process of a job
step, and a wrapper (torchrun, a launcher script) forwards its own signal as well, so a process gets two at once;
Slurm's SIGKILL comes KillWait (30 s by default) later, and a person's second Ctrl-C comes later than a second.
``leap train`` (``GracefulStop``) and ``leap generate-programs`` (where an abandoned request is paid again) use it."""

from __future__ import annotations

SAME_STOP_SECONDS = 5.0  # SIGTERM (and, in train, a rank's own signal after another rank's stop reached it)
SAME_SIGINT_SECONDS = 1.0


def same_stop_window(name: str) -> float:
    """Seconds within which the signal ``name`` ("SIGINT", "SIGTERM") again is the same stop."""
    return SAME_SIGINT_SECONDS if name == "SIGINT" else SAME_STOP_SECONDS
