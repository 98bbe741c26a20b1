"""Generate the GoBGP v3 gRPC stubs into ``agent/gobgpapi`` (a build product, git-ignored).

The .proto files come from Debian's ``golang-github-osrg-gobgp-dev`` (GoBGP v3.10.0); set
``GOBGP_PROTO_DIR`` to use another GoBGP v3 build. protoc emits absolute imports between the
generated modules (``import gobgp_pb2``); they are rewritten to relative ones so the stubs
import as a proper package.
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


def main() -> int:
    proto_dir = Path(os.environ.get("GOBGP_PROTO_DIR", DEFAULT_PROTO_DIR))
    missing = [name for name in PROTO_FILES if not (proto_dir / name).is_file()]
    if missing:
        print(
            f"error: GoBGP API protos not found in {proto_dir} (missing {', '.join(missing)}).\n"
            "Install the Debian package 'golang-github-osrg-gobgp-dev' (apt-get install "
            "golang-github-osrg-gobgp-dev) or set GOBGP_PROTO_DIR to a GoBGP v3 'api/' folder.",
            file=sys.stderr,
        )
        return 1
    try:
        from grpc_tools import protoc
    except ImportError:
        print("error: grpcio-tools is not installed (pip install 'ipvlan-bgp-agent[dev]')", file=sys.stderr)
        return 1

    OUT_DIR.mkdir(parents=True, exist_ok=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "protoc",
        f"-I{proto_dir}",
        f"-I{include}",
        f"--python_out={OUT_DIR}",
        f"--pyi_out={OUT_DIR}",
        f"--grpc_python_out={OUT_DIR}",
        *(str(proto_dir / name) for name in PROTO_FILES),
    ]
    if protoc.main(args) != 0:
        print(f"error: protoc failed on {proto_dir}", file=sys.stderr)
        return 1
    for generated in sorted(OUT_DIR.glob("*_pb2*.py*")):
        text = generated.read_text()
        generated.write_text(_ABSOLUTE_IMPORT.sub(r"from . import \1_pb2 as ", text))
    (OUT_DIR / "__init__.py").write_text(
        f'"""GoBGP v3 API stubs generated from {proto_dir} by proto/generate.py. Do not edit."""\n'
    )
    print(f"generated GoBGP API stubs from {proto_dir} into {OUT_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
