"""Config fuzz: generated and mutated agent.toml files through ``ipvlan-bgp validate`` (in process): the exit
code is 0 or 2 and nothing else escapes, for any file.

    python -m tests.fuzz.config --count 10000 [--seed N]

A small run is part of ``make test`` (tests/unit/test_fuzz_config.py); the fault suite runs 10,000.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import random
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from agent.cli import main as cli_main

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "agent.toml"
VALUES = ("inf", "-inf", "nan", "1e26", "-1", "0", "1e-300", "99999999999999999999999", "true", '""',
          '"0.0.0.0/0"', '"::/0"', '"10.0.0.0/33"', '"\\u001b[31m"', "[]", "[[[[[[[[1]]]]]]]]", "{}",
          '"/"', '"relative/path"', "1979-05-27T07:32:00Z", '"' + "x" * 5000 + '"', "0x7fffffff", "3.5")
KEYS = ("max_prefixes", "max_prefixes_per_namespace", "settle", "rpc_timeout", "connect_timeout", "prefix",
        "socket", "listen", "exclude", "netns_rescan", "full_reconcile", "uplinks", "local_pref", "med")


def generate(rng: random.Random, example: bytes) -> bytes:
    choice = rng.randrange(10)
    if choice == 0:
        return rng.randbytes(rng.randint(0, 2048))
    if choice == 1:
        depth = rng.choice((10, 100, 1000, 10_000, 100_000))
        return b"x = " + b"[" * depth + b"]" * depth + b"\n"
    if choice == 2:
        depth = rng.choice((100, 1000, 10_000))
        return b"x = " + b"{a = " * depth + b"1" + b"}" * depth + b"\n"
    if choice == 3:  # many networks
        lines = [example]
        for i in range(rng.randint(1, 3000)):
            lines.append(f"[[networks]]\nprefix = \"10.{(i >> 8) & 255}.{i & 255}.0/24\"\n".encode())
        return b"\n".join(lines)
    text = bytearray(example)
    lines = text.split(b"\n")
    for _ in range(rng.randint(1, 5)):
        kind = rng.randrange(6)
        i = rng.randrange(len(lines))
        if kind == 0:
            lines[i] = f"{rng.choice(KEYS)} = {rng.choice(VALUES)}".encode()
        elif kind == 1 and b"=" in lines[i]:
            key = lines[i].split(b"=", 1)[0]
            lines[i] = key + b"= " + rng.choice(VALUES).encode()
        elif kind == 2:
            del lines[i]
            if not lines:
                lines = [b""]
        elif kind == 3:
            lines.insert(i, lines[rng.randrange(len(lines))])
        elif kind == 4 and lines[i]:
            line = bytearray(lines[i])
            line[rng.randrange(len(line))] = rng.randrange(256)
            lines[i] = bytes(line)
        else:
            lines.insert(i, rng.choice((b"[[networks]]", b"[gobgp]", b"[status]", b"[timers]", b"\xff\xfe",
                                        b"[[networks]]\nprefix = \"::/0\"")))
    return b"\n".join(lines)


@dataclass
class FuzzResult:
    files: int = 0
    valid: int = 0
    invalid: int = 0
    seconds: float = 0.0
    slowest: float = 0.0
    crashes: list[tuple[bytes, str]] = field(default_factory=list)


def validate(path: Path) -> int:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        return cli_main(["validate", str(path)])


def fuzz(count: int, seed: int = 0, keep: int = 10) -> FuzzResult:
    rng = random.Random(seed)
    example = EXAMPLE.read_bytes()
    result = FuzzResult()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "agent.toml"
        for _ in range(count):
            data = generate(rng, example)
            path.write_bytes(data)
            result.files += 1
            one = time.perf_counter()
            try:
                code = validate(path)
            except BaseException:  # exactly what the fuzzer looks for (SystemExit from argparse included)
                code = -1
                if len(result.crashes) < keep:
                    result.crashes.append((data, traceback.format_exc()))
            result.slowest = max(result.slowest, time.perf_counter() - one)
            if code == 0:
                result.valid += 1
            elif code == 2:
                result.invalid += 1
            elif code != -1 and len(result.crashes) < keep:
                result.crashes.append((data, f"exit code {code}"))
    result.seconds = time.perf_counter() - started
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    result = fuzz(args.count, args.seed)
    print(f"config fuzz: {result.files:,} files (seed {args.seed}) in {result.seconds:.1f} s "
          f"(slowest {result.slowest * 1e3:.0f} ms): {result.valid:,} valid (exit 0), {result.invalid:,} invalid "
          f"(exit 2), {len(result.crashes)} other outcome(s)")
    for data, trace in result.crashes:
        print(f"--- file {data[:300]!r}{'...' if len(data) > 300 else ''}\n{trace}")
    return 1 if result.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
