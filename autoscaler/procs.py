"""Is a process alive? (By /proc: a zombie is dead, and no signal is sent.)"""

from __future__ import annotations


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False
