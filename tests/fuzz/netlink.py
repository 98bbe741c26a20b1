"""Netlink parser fuzz: random bytes and mutations of the captured kernel datagrams (tests/fixtures/netlink)
through every parsing path discovery uses (events: ``changes``; replies: ``replies_to`` + ``parse_change`` /
``parse_nsid``). The only exception allowed is NetlinkParseError (and OSError for an error reply).

    python -m tests.fuzz.netlink --count 1000000 [--seed N]

A small run is part of ``make test`` (tests/unit/test_fuzz.py); the fault suite runs a million.
"""

from __future__ import annotations

import argparse
import random
import struct
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from agent.rtnl import (
    NLMSG_HDR,
    RTM_NEWNSID,
    NetlinkParseError,
    changes,
    parse_change,
    parse_nsid,
    replies_to,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "netlink"
_INTERESTING = (0, 1, 3, 4, 0x7F, 0x80, 0xFF)
_INTERESTING_U16 = (0, 1, 3, 4, 5, 7, 8, 0xFFFF, 0x8000, 0x7FFF)


def fixture_datagrams() -> list[bytes]:
    return [path.read_bytes() for path in sorted(FIXTURES.glob("*.bin"))]


def _attribute_spans(data: bytes, start: int, end: int, parents: tuple[int, ...],
                     found: list[tuple[int, tuple[int, ...]]]) -> None:
    """(offset, enclosing attribute offsets) of every rtattr in data[start:end], nested ones included when
    their payload is itself a well-formed attribute list."""
    offset = start
    while offset + 4 <= end:
        length = struct.unpack_from("=H", data, offset)[0]
        if length < 4 or offset + length > end:
            return
        found.append((offset, parents))
        inner, inner_end = offset + 4, offset + length
        if inner_end - inner >= 4 and _well_formed(data, inner, inner_end):
            _attribute_spans(data, inner, inner_end, (*parents, offset), found)
        offset += (length + 3) & ~3


def _well_formed(data: bytes, start: int, end: int) -> bool:
    while start + 4 <= end:
        length = struct.unpack_from("=H", data, start)[0]
        if length < 4 or start + length > end:
            return False
        start += (length + 3) & ~3
    return start >= end


def shrink_attribute(rng: random.Random, datagram: bytes) -> bytes:
    """Cut the payload of one (possibly nested) attribute of the first message short, keeping every
    enclosing length consistent: reaches the attribute parsers with short values."""
    data = bytearray(datagram)
    if len(data) < NLMSG_HDR.size:
        return datagram
    length, kind = struct.unpack_from("=IH", data, 0)
    header = 16 if kind in (16, 17) else 8  # ifinfomsg / ifaddrmsg
    spans: list[tuple[int, tuple[int, ...]]] = []
    _attribute_spans(bytes(data), NLMSG_HDR.size + header, min(length, len(data)), (), spans)
    if not spans:
        return datagram
    offset, parents = rng.choice(spans)
    old = struct.unpack_from("=H", data, offset)[0]
    keep = rng.randint(0, old - 4)
    removed = ((old + 3) & ~3) - ((4 + keep + 3) & ~3)
    del data[offset + 4 + keep:offset + 4 + keep + (old - 4 - keep)]
    data[offset + 4 + keep:offset + 4 + keep] = b"\0" * (-(4 + keep) % 4)
    del data[offset + ((4 + keep + 3) & ~3):offset + ((4 + keep + 3) & ~3) + (((old + 3) & ~3) - old)]
    struct.pack_into("=H", data, offset, 4 + keep)
    for parent in parents:
        struct.pack_into("=H", data, parent, struct.unpack_from("=H", data, parent)[0] - removed)
    struct.pack_into("=I", data, 0, length - removed)
    return bytes(data)


def mutate(rng: random.Random, seeds: list[bytes]) -> bytes:
    data = bytearray(rng.choice(seeds))
    if rng.random() < 0.3:
        data = bytearray(shrink_attribute(rng, bytes(data)))
        if rng.random() < 0.5:
            return bytes(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(8)
        if not data:
            data += rng.randbytes(rng.randint(1, 32))
        position = rng.randrange(len(data))
        if choice == 0:
            data[position] ^= 1 << rng.randrange(8)
        elif choice == 1:
            data[position] = rng.choice(_INTERESTING)
        elif choice == 2 and position + 2 <= len(data):  # an nlmsg or rtattr length / type field
            struct.pack_into("=H", data, position & ~1, rng.choice(_INTERESTING_U16))
        elif choice == 3:
            del data[rng.randrange(len(data) + 1):]
        elif choice == 4:
            end = rng.randrange(position, len(data) + 1)
            data[position:position] = data[position:end]
        elif choice == 5:
            del data[position:rng.randrange(position, len(data) + 1)]
        elif choice == 6 and len(data) >= NLMSG_HDR.size:  # a consistent header over a mutated body
            struct.pack_into("=I", data, 0, rng.choice((len(data), len(data) - 1, len(data) + 4, 16, 17)))
        else:
            data[position:position + 4] = rng.randbytes(4)
    return bytes(data)


def one_input(rng: random.Random, seeds: list[bytes]) -> bytes:
    if rng.random() < 0.25:
        return rng.randbytes(rng.randint(0, 256))
    return mutate(rng, seeds)


def parse_everything(data: bytes) -> None:
    """Every path discovery takes through these bytes; raises whatever the parser raises."""
    for _ in changes(data):
        pass
    try:
        replies = replies_to(data, 0, 0)
    except OSError:
        return  # an error reply: a defined outcome
    for kind, _, start, end in replies:
        if kind == RTM_NEWNSID:
            parse_nsid(data, start, end)
        else:
            parse_change(kind, data, start, end)


@dataclass
class FuzzResult:
    inputs: int = 0
    parse_errors: int = 0
    seconds: float = 0.0
    crashes: list[tuple[bytes, str]] = field(default_factory=list)  # (input, traceback) of anything else


def fuzz(count: int, seed: int = 0, keep: int = 10) -> FuzzResult:
    rng = random.Random(seed)
    seeds = fixture_datagrams()
    result = FuzzResult()
    started = time.perf_counter()
    for _ in range(count):
        data = one_input(rng, seeds)
        result.inputs += 1
        try:
            parse_everything(data)
        except NetlinkParseError:
            result.parse_errors += 1
        except Exception:  # exactly what the fuzzer looks for
            if len(result.crashes) < keep:
                result.crashes.append((data, traceback.format_exc()))
    result.seconds = time.perf_counter() - started
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    args = parser.parse_args()
    result = fuzz(args.count, args.seed)
    print(f"netlink parser fuzz: {result.inputs:,} inputs (seed {args.seed}) in {result.seconds:.1f} s: "
          f"{result.parse_errors:,} NetlinkParseError, {len(result.crashes)} other exception(s)")
    for data, trace in result.crashes:
        print(f"--- input {data.hex()}\n{trace}")
    return 1 if result.crashes else 0


if __name__ == "__main__":
    sys.exit(main())
