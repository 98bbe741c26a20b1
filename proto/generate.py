"""Generate the GoBGP v3 gRPC stubs (a build product, never committed).

``make stubs`` runs this file to write them into ``agent/gobgpapi`` for the editable checkout; building a
wheel (``setup.py``'s ``build_py``) calls :func:`generate` to write them into the wheel, so an installed
agent needs neither the .proto files nor grpcio-tools.

The .proto files come from Debian's ``golang-github-osrg-gobgp-dev`` (GoBGP v3.10.0); set
``GOBGP_PROTO_DIR`` to use another GoBGP v3 build (the v4 API differs and is not supported). protoc
emits absolute imports between the generated modules (``import gobgp_pb2``); they are rewritten to
relative ones so the stubs import as a proper package.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

DEFAULT_PROTO_DIR = "/usr/share/gocode/src/github.com/osrg/gobgp/api"
PROTO_FILES = ("gobgp.proto", "attribute.proto", "capability.proto")
OUT_DIR = Path(__file__).resolve().parent.parent / "agent" / "gobgpapi"
_ABSOLUTE_IMPORT = re.compile(r"^import (gobgp|attribute|capability)_pb2 as ", re.MULTILINE)


class StubError(Exception):
    """The stubs cannot be generated; the message says what to install or set."""


def proto_dir_from_env() -> Path:
    return Path(os.environ.get("GOBGP_PROTO_DIR", DEFAULT_PROTO_DIR))


def generate(proto_dir: Path, out_dir: Path) -> None:
    missing = [name for name in PROTO_FILES if not (proto_dir / name).is_file()]
    if missing:
        raise StubError(
            f"GoBGP API protos not found in {proto_dir} (missing {', '.join(missing)}). "
            "Install the Debian package 'golang-github-osrg-gobgp-dev' (build time only) "
            "or set GOBGP_PROTO_DIR to a GoBGP v3 'api/' folder."
        )
    try:
        from grpc_tools import protoc
    except ImportError:
        raise StubError("grpcio-tools is not installed (pip install 'ipvlan-bgp-agent[dev]')") from None

    out_dir.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(proto_dir / name) for name in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        raise StubError(f"protoc failed on {proto_dir}")
    for generated in sorted(out_dir.glob("*_pb2*.py*")):
        text = generated.read_text()
        generated.write_text(_ABSOLUTE_IMPORT.sub(r"from . import \1_pb2 as ", text))
    (out_dir / "__init__.py").write_text(
        f'"""GoBGP v3 API stubs generated from {proto_dir} by proto/generate.py. Do not edit."""\n'
    )


def main() -> int:
    proto_dir = proto_dir_from_env()
    try:
        generate(proto_dir, OUT_DIR)
    except StubError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"generated GoBGP API stubs from {proto_dir} into {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
