"""UDP flows from one namespace to an address served from several (anycast), to see where each flow lands.

A sender thread cycles over ``flows`` sockets in the source namespace, each with its own source port (one flow
each, as the routers' ECMP hash sees it), and sends numbered datagrams at a steady rate. A receiver socket in
each serving namespace, bound to the address, records every datagram it gets. Afterwards: which datagrams were
lost, how many each namespace got, which flows it served. Sockets are made inside the namespaces with setns
(agent/netns.py), so nothing is spawned: in the emulated VM a process start costs a second.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import struct
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.netns import socket_in

_DATAGRAM = struct.Struct("!IH")  # sequence number, flow


@dataclass(frozen=True)
class Arrival:
    seq: int
    flow: int
    at: float  # time.monotonic() when read


@dataclass
class FlowStream:
    source: Path  # namespace file of the sender (the client)
    address: str
    port: int
    receivers: Mapping[str, Path]  # name (the host) -> namespace file of a container holding ``address``
    flows: int = 64
    rate: float = 200.0  # datagrams per second, over all flows
    sent: list[tuple[int, int, float]] = field(default_factory=list)  # (seq, flow, monotonic send time)
    arrived: dict[str, list[Arrival]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop_sending: threading.Event = field(default_factory=threading.Event)
    _stop_receiving: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _sockets: dict[str, socket.socket] = field(default_factory=dict)

    def start(self) -> FlowStream:
        selector = selectors.DefaultSelector()
        for name, netns in self.receivers.items():
            sock = socket_in(str(netns), socket.AF_INET, socket.SOCK_DGRAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.address, self.port))
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, name)
            self._sockets[name] = sock
            self.arrived[name] = []
        senders = []
        for _ in range(self.flows):
            sock = socket_in(str(self.source), socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(("0.0.0.0", 0))  # a port of its own: the flow
            senders.append(sock)
        self._threads = [threading.Thread(target=self._receive, args=(selector,), daemon=True),
                         threading.Thread(target=self._send, args=(senders,), daemon=True)]
        for thread in self._threads:
            thread.start()
        return self

    def _send(self, senders: list[socket.socket]) -> None:
        interval = 1.0 / self.rate
        started = time.monotonic()
        seq = 0
        try:
            while not self._stop_sending.is_set():
                flow = seq % len(senders)
                with self._lock:
                    self.sent.append((seq, flow, time.monotonic()))
                # no route for a moment (ENETUNREACH) or an ICMP error reported back: counted as lost
                with contextlib.suppress(OSError):
                    senders[flow].sendto(_DATAGRAM.pack(seq, flow), (self.address, self.port))
                seq += 1
                time.sleep(max(0.0, started + seq * interval - time.monotonic()))
        finally:
            for sock in senders:
                sock.close()

    def _receive(self, selector: selectors.BaseSelector) -> None:
        while not self._stop_receiving.is_set():
            for key, _ in selector.select(0.05):
                self._drain(key.fileobj, key.data)  # type: ignore[arg-type]
        selector.close()

    def _drain(self, sock: socket.socket, name: str) -> None:
        while True:
            try:
                data = sock.recv(64)
            except (BlockingIOError, OSError):
                return
            seq, flow = _DATAGRAM.unpack_from(data)
            with self._lock:
                self.arrived[name].append(Arrival(seq, flow, time.monotonic()))

    def stop(self, linger: float = 0.5) -> FlowStream:
        """Stop sending; read what is still on its way for ``linger`` seconds; close every socket."""
        receiver, sender = self._threads
        self._stop_sending.set()
        sender.join()
        time.sleep(linger)
        self._stop_receiving.set()
        receiver.join()
        for sock in self._sockets.values():
            sock.close()
        return self

    # What happened, from a consistent snapshot.
    def count(self, name: str, sent_after: float = 0.0) -> int:
        with self._lock:
            sent_at = {seq: at for seq, _, at in self.sent}
            return sum(1 for a in self.arrived[name] if sent_at.get(a.seq, 0.0) >= sent_after)

    def lost(self) -> list[tuple[int, int, float]]:
        """Datagrams sent and never received by any receiver (call after ``stop``)."""
        with self._lock:
            got = {a.seq for arrivals in self.arrived.values() for a in arrivals}
            return [s for s in self.sent if s[0] not in got]

    def flows_of(self, name: str, sent_before: float | None = None) -> set[int]:
        with self._lock:
            sent_at = {seq: at for seq, _, at in self.sent}
            return {a.flow for a in self.arrived[name]
                    if sent_before is None or sent_at.get(a.seq, float("inf")) < sent_before}

    def served_by(self) -> dict[int, set[str]]:
        """Flow -> the receivers that got any of its datagrams."""
        result: dict[int, set[str]] = {}
        with self._lock:
            for name, arrivals in self.arrived.items():
                for arrival in arrivals:
                    result.setdefault(arrival.flow, set()).add(name)
        return result

