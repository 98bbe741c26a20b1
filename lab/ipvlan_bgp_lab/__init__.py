"""The ipvlan-bgp-agent lab: real gobgpd, FRR and namespaces for tests, benchmarks and the demo, the
containerlab topology realiser and the VM harness. Not part of the agent: the agent never imports it."""

from __future__ import annotations

import os
from pathlib import Path

REPO_ENV = "IPVLAN_BGP_REPO"


class RepoNotFound(RuntimeError):
    """The lab needs the ipvlan-bgp-agent source tree (topologies, configs) and cannot find it."""


def _is_repo(path: Path) -> bool:
    return (path / "containerlab").is_dir() and (path / "agent" / "__init__.py").is_file()


def repo_root() -> Path:
    """The ipvlan-bgp-agent checkout: ``$IPVLAN_BGP_REPO``, else the working directory or one above it,
    else the one this package was installed from (an editable install)."""
    if configured := os.environ.get(REPO_ENV):
        path = Path(configured).resolve()
        if not _is_repo(path):
            raise RepoNotFound(f"{REPO_ENV}={configured} is not an ipvlan-bgp-agent checkout")
        return path
    cwd = Path.cwd().resolve()
    for candidate in (cwd, *cwd.parents, *Path(__file__).resolve().parents):
        if _is_repo(candidate):
            return candidate
    raise RepoNotFound(f"cannot find the ipvlan-bgp-agent checkout from {cwd}: run inside it or set {REPO_ENV}")
