"""Deadlines and TCP keepalives for every connection chunkd opens (issue 22 row 4).

A connection can go silent without a FIN or an RST (a firewall or NAT that forgot it, a
failover behind a virtual IP): without a deadline a statement on it waits for ever. So every
statement and connect of chunkd's own has a deadline derived from the lease (a pool acquire
waits at most for those), user SQL (ctx.tx writes, ctx.db reads) a longer one, and sockets
carry TCP keepalives and a TCP user timeout so the kernel also gives up on a peer that
stopped answering.
"""
from __future__ import annotations

import socket
from typing import Any

import msgspec


class Deadlines(msgspec.Struct, frozen=True):
    statement: float   # each of chunkd's own statements and connects
    user_sql: float    # each user statement: ctx.tx writes, ctx.db reads (may legitimately run long)
    migration: float   # each migration statement (an index on a big table takes a while)
    stall: float       # no round trip on the pool (or no heartbeat) this long: drop every connection
    unhealthy: float   # no round trip this long: /healthz answers 503 so a supervisor restarts us

    @classmethod
    def from_lease(cls, lease_seconds: float) -> "Deadlines":
        """A statement may take a lease (at least 10 s: a large completer flush on a loaded
        server is slow, not dead); user SQL ten times that; a daemon that has not finished a
        round trip for a lease (at least 5 s) abandons its connections, and after three times
        that it reports itself unhealthy."""
        statement = max(lease_seconds, 10.0)
        stall = max(lease_seconds, 5.0)
        return cls(statement=statement, user_sql=10 * statement, migration=3600.0, stall=stall,
                   unhealthy=3 * stall)


DEFAULT = Deadlines.from_lease(30.0)

# A socket idle this long gets a keepalive probe, then one every _KEEPINTVL seconds; after
# _KEEPCNT unanswered probes the kernel closes it (so a dead idle peer is found in ~25 s).
_KEEPIDLE, _KEEPINTVL, _KEEPCNT = 10, 5, 3


def keep_alive(conn: Any, deadline: float) -> None:
    """TCP keepalives and a TCP user timeout (data unacknowledged for `deadline` seconds
    closes the socket) on an asyncpg connection's socket. asyncpg has no option for either
    (server_settings are the server's, not the client socket's), so they are set on the
    socket once connected. A Unix socket needs neither."""
    transport = getattr(conn, "_transport", None)
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for name, value in (("TCP_KEEPIDLE", _KEEPIDLE), ("TCP_KEEPINTVL", _KEEPINTVL), ("TCP_KEEPCNT", _KEEPCNT),
                        ("TCP_USER_TIMEOUT", int(deadline * 1000))):
        opt = getattr(socket, name, None)
        if opt is not None:  # Linux has them all; other systems some
            sock.setsockopt(socket.IPPROTO_TCP, opt, value)
