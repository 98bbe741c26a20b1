"""Where a benchmark figure comes from: the commit of the code that measured it, and whether the tree differed."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    out = subprocess.run(["git", "-c", f"safe.directory={REPO}", *args], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() if out.returncode == 0 else ""


def code_state(outputs: tuple[str, ...] = ()) -> dict[str, object]:
    """{"commit": full hash or "unknown", "dirty": tracked files differ from it (None: unknown)}; ``outputs``
    (paths the benchmark itself rewrites, e.g. the page it renders) do not count."""
    commit = _git("rev-parse", "HEAD") or "unknown"
    status = subprocess.run(["git", "-c", f"safe.directory={REPO}", "status", "--porcelain", "--untracked-files=no",
                             "--", ".", *(f":!{path}" for path in outputs)], cwd=REPO, capture_output=True, text=True)
    dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    return {"commit": commit, "dirty": dirty}
