"""A Redis Cluster as a store topology (see ``gateway.store.topology``).

redis-py's ``RedisCluster`` routes reads and follows ``MOVED``/``ASK``; writes
with ``WAIT`` are sent here on one connection of the slot's primary, following
``MOVED`` (patching redis-py's slot map) and ``ASK`` the same way. A slot whose
primary has no replica in the slot map is written without ``WAIT`` (nothing
could acknowledge it).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.exceptions import AskError, ClusterError, MovedError, SlotNotCoveredError
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.store.failover import Failure, NotConnected
from gateway.store.pipelined import Lane
from gateway.store.topology import (
    CONNECT_FAILURES,
    Address,
    Command,
    WriteReply,
    exchange,
    split_replies,
    with_wait,
)

# The slot's node changed while a write was on its way; follow at most this many.
_MAX_REDIRECTS = 5


class ClusterTopology:
    """A Redis Cluster: redis-py routes; writes with ``WAIT`` are sent here (module docstring)."""

    generation = 0

    def __init__(self, client: RedisCluster) -> None:
        self._client = client

    async def client(self) -> RedisCluster:
        return self._client

    def lane(self) -> Lane | None:
        return None  # redis-py routes every key to its slot's node

    def _node_for(self, key: str) -> ClusterNode:
        node = self._client.get_node_from_key(key)
        if node is None:
            raise SlotNotCoveredError("no node serves the key's slot")
        return node

    def _has_replica(self, key: str) -> bool:
        nodes = self._client.nodes_manager.slots_cache.get(self._client.keyslot(key), [])
        return len(nodes) > 1

    async def _on_node(self, node: ClusterNode, commands: list[Command]) -> list[Any]:
        connection = node.acquire_connection()
        try:
            try:
                await node.disconnect_if_needed(connection)
                await connection.connect()  # type: ignore[no-untyped-call]
            except CONNECT_FAILURES as exc:
                raise NotConnected(exc) from exc
            try:
                return await exchange(connection, commands)
            except BaseException:
                await connection.disconnect()
                raise
        finally:
            node.release(connection)

    async def write(self, key: str, command: Command, acks: int, timeout_ms: int) -> WriteReply:
        client = self._client
        try:
            await client.initialize()
        except CONNECT_FAILURES as exc:
            raise NotConnected(exc) from exc
        wait = acks if self._has_replica(key) else 0
        node = self._node_for(key)
        asking = False
        for _ in range(_MAX_REDIRECTS):
            commands = with_wait(command, wait, timeout_ms)
            try:
                replies = await self._on_node(
                    node, [("ASKING",), *commands] if asking else commands
                )
            except (NotConnected, RedisConnectionError, OSError):
                # The slot's node may be gone: the next command refreshes the slot map.
                client._request_refresh(last_failed_node_name=node.name)
                raise
            if asking:
                replies = replies[1:]
                asking = False
            first = replies[0]
            if isinstance(first, MovedError):
                # Not run: the slot moved (a failover or a reshard). Patch the map
                # the way RedisCluster does and send it to the new owner.
                await client.nodes_manager.move_slot(first)
                node = self._node_for(key)
                continue
            if isinstance(first, AskError):
                target = client.get_node(host=first.host, port=first.port)
                if target is None:
                    raise first
                node, asking = target, True
                continue
            reply, acked = split_replies(replies, wait)
            return WriteReply(reply, acked, (str(node.host), int(node.port)))
        raise ClusterError("too many redirects")

    async def confirm_primary(self, address: Address) -> bool:
        node = self._client.get_node(host=address[0], port=address[1])
        if node is None:
            return False
        try:
            role = await node.execute_command("ROLE")
            info = await node.execute_command("CLUSTER", "INFO")
        except CONNECT_FAILURES:
            return False
        first = role[0] if isinstance(role, list | tuple) and role else b""
        is_master = (first.decode() if isinstance(first, bytes) else str(first)) == "master"
        if isinstance(info, dict):
            state = str(info.get("cluster_state", info.get(b"cluster_state", "")))
            healthy = state in ("ok", "b'ok'")
        else:
            healthy = "cluster_state:ok" in (
                info.decode() if isinstance(info, bytes) else str(info)
            )
        return is_master and healthy

    async def recover(self, failure: Failure, generation: int, *, patient: bool = True) -> None:
        # The retry's own initialize() runs the refresh the failure asked for.
        await asyncio.sleep(random.uniform(0.02, 0.06))

    async def aclose(self) -> None:
        with contextlib.suppress(*CONNECT_FAILURES):
            await self._client.aclose()
