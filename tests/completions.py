"""Shell completion scripts for ``ipvlan-bgp``, generated from its argparse parser by shtab.

``python -m tests.completions DIR`` writes DIR/bash/ipvlan-bgp and DIR/zsh/_ipvlan-bgp (``make completions``);
tests/unit/test_cli.py checks that the committed ones match the parser.
"""

from __future__ import annotations

import sys
from pathlib import Path

import shtab

from agent.cli import build_parser

FILES = {"bash": Path("bash") / "ipvlan-bgp", "zsh": Path("zsh") / "_ipvlan-bgp"}


def script(shell: str) -> str:
    return str(shtab.complete(build_parser(), shell=shell)).rstrip("\n") + "\n"


def main(directory: Path) -> None:
    for shell, name in FILES.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(script(shell))
        print(f"wrote {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
