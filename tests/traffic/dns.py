"""A DNS server on loopback for tests: answers A queries for the names it is given, from a table the
test changes while it runs (as a headless Service's name gains the pods the autoscaler adds).

gRPC's resolver asks it when a channel's target names it: `dns://127.0.0.1:<port>/<name>:<grpc port>`.
"""

from __future__ import annotations

import asyncio
import typing
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from dnslib import QTYPE, RCODE, RR, A, DNSRecord


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server
        self._transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = typing.cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        assert self._transport is not None
        self._transport.sendto(self._server.answer(data), addr)


class DnsServer:
    """Answers A queries for `records` (name -> IPv4 addresses); NXDOMAIN for other names, no records
    for other types of a known name. Counts the queries for each name."""

    def __init__(self) -> None:
        self.records: dict[str, list[str]] = {}
        self.queries: dict[str, int] = {}
        self.port = 0

    def answer(self, data: bytes) -> bytes:
        """The reply to one query packet.

        Args:
            data: the query, in DNS wire format.

        Returns:
            The reply, in DNS wire format.
        """
        query = DNSRecord.parse(data)
        reply = query.reply()
        name = str(query.q.qname).rstrip(".")
        if name not in self.records:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply.pack()
        if query.q.qtype == QTYPE.A:
            self.queries[name] = self.queries.get(name, 0) + 1
            for address in self.records[name]:
                reply.add_answer(RR(query.q.qname, QTYPE.A, rdata=A(address), ttl=0))
        return reply.pack()


@asynccontextmanager
async def dns_server() -> AsyncIterator[DnsServer]:
    """A `DnsServer` on a free UDP port of 127.0.0.1 for the duration of the block."""
    server = DnsServer()
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _Protocol(server), local_addr=("127.0.0.1", 0)
    )
    server.port = transport.get_extra_info("sockname")[1]
    try:
        yield server
    finally:
        transport.close()
