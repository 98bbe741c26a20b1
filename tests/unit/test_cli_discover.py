"""`endpoints` and `plan` read one discovery snapshot: a discovery that crashes must not leave them waiting."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from agent import cli
from agent.config import parse_config
from agent.discovery import Discovery


async def test_a_crashed_discovery_is_reported_not_waited_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def crash(self: Discovery) -> None:
        raise OSError("netlink says no")

    monkeypatch.setattr(Discovery, "run", crash)
    config = parse_config({"uplinks": ["lo"], "ownership_community": "65001:4242:1", "netns_dirs": [str(tmp_path)],
                           "networks": [{"prefix": "10.1.100.0/24"}]})
    with pytest.raises(OSError, match="netlink says no"):
        await asyncio.wait_for(cli._discover(config), 30)  # the bound turns a hang into a failure
