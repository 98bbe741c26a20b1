"""Shared pytest set-up.  The vm tier plugin (tests marked ``vm``) lives in tests/vm/plugin.py."""

pytest_plugins = ["tests.vm.plugin"]
