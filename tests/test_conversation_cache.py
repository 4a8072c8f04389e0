"""Two instances' caches of conversations on one database: a change of members made
through one holds for the other's sends as soon as it has answered, before any event of
it has reached the other (here, none ever does)."""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncEngine

from kibitz.conversations import Conversations
from kibitz.database import users
from kibitz.errors import NotFound
from kibitz.plugins.memory import MemoryStorage, MemoryTransport


async def new_users(engine: AsyncEngine, count: int) -> list[int]:
    rows = [
        {"username": uuid.uuid4().hex[:20], "display_name": "x", "password_hash": "-", "created_ms": 0}
        for _ in range(count)
    ]
    async with engine.begin() as db:
        await db.execute(users.insert(), rows)
        names = [row["username"] for row in rows]
        found = await db.execute(sa.select(users.c.id).where(users.c.username.in_(names)))
    return sorted(found.scalars())


def instance(engine: AsyncEngine) -> Conversations:
    """An instance's conversations, with a transport of its own: no event crosses over."""
    return Conversations(engine, MemoryTransport(), MemoryStorage())


async def test_a_member_removed_elsewhere_cannot_send_here(engine: AsyncEngine) -> None:
    here, there = instance(engine), instance(engine)
    alice, bob = await new_users(engine, 2)
    cid = (await there.create_group(alice, "g", [bob])).id
    assert bob in (await here.for_sender(cid, bob)).members  # cached here now
    conversation = await there.get(cid)
    assert conversation is not None
    await there.remove_member(conversation, alice, bob)
    assert bob in (await here.of_member(cid, alice)).members  # the cached copy is stale...
    with pytest.raises(NotFound):
        await here.for_sender(cid, bob)  # ...but a send checks it


async def test_a_member_added_elsewhere_is_in_the_next_send_here(engine: AsyncEngine) -> None:
    here, there = instance(engine), instance(engine)
    alice, bob, carol = await new_users(engine, 3)
    cid = (await there.create_group(alice, "g", [bob])).id
    await here.for_sender(cid, alice)
    conversation = await there.get(cid)
    assert conversation is not None
    await there.add_member(conversation, carol)
    assert carol in (await here.for_sender(cid, alice)).members


async def test_an_unchanged_group_is_served_from_the_cache(engine: AsyncEngine) -> None:
    here = instance(engine)
    alice, bob = await new_users(engine, 2)
    cid = (await here.create_group(alice, "g", [bob])).id
    first = await here.for_sender(cid, alice)
    assert await here.for_sender(cid, bob) is first
