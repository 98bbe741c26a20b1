"""Build hook: generate the GoBGP API stubs into the wheel (all other metadata is in pyproject.toml).

The stubs are a build product of the GoBGP .proto files (``proto/generate.py``); grpcio-tools is a
build requirement only. An editable install (``make setup``) skips this: ``make stubs`` writes them
into the checkout instead.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent


class BuildPyWithStubs(build_py):
    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        spec = importlib.util.spec_from_file_location("_gobgp_generate", HERE / "proto" / "generate.py")
        assert spec is not None and spec.loader is not None
        generator = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(generator)
        proto_dir = generator.proto_dir_from_env()
        out_dir = Path(self.build_lib) / "agent" / "gobgpapi"
        try:
            generator.generate(proto_dir, out_dir)
        except generator.StubError as exc:
            raise SystemExit(f"error: cannot build the GoBGP API stubs: {exc}") from None
        print(f"generated GoBGP API stubs from {proto_dir} into {out_dir}")


setup(cmdclass={"build_py": BuildPyWithStubs})
