"""Conversations: direct and group, membership rules, read markers, per-user views.

Membership lives in the relational database. Every change is also written to the event
log of each user it concerns (a ``conversation`` or ``read`` event), so their devices
learn of it; each instance drops its cached copy of a conversation when such an event
passes through its live feed. A send does not wait for that: it checks the cached copy's
``members_version`` against the database's (``for_sender``), so a change of members
made on any instance holds for every send after it has answered.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from .batching import Batcher
from .database import conversations, inserted_id, members
from .errors import Forbidden, InvalidRequest, NotFound, Unavailable
from .models import Conversation, LogEntry, now_ms, rfc3339
from .slots import Storage, Transport

MAX_NAME = 128
CACHE_SIZE = 10_000


class Conversations:
    def __init__(self, engine: AsyncEngine, transport: Transport, storage: Storage) -> None:
        self.engine = engine
        self.transport = transport
        self.storage = storage
        # Each cached conversation with its members_version, the count of its membership
        # changes: ``for_sender`` compares it with the database's.
        self._cache: OrderedDict[int, tuple[Conversation, int]] = OrderedDict()
        self._versions = Batcher(self._current_versions)

    # -- reading ---------------------------------------------------------------

    async def get(self, conversation_id: int) -> Conversation | None:
        """The conversation (cached), or None."""
        return (await self.get_many([conversation_id])).get(conversation_id)

    async def get_many(self, conversation_ids: Sequence[int]) -> dict[int, Conversation]:
        """The conversations that exist among ``conversation_ids``: cached, or read in two queries."""
        found = {cid: self._cache[cid][0] for cid in conversation_ids if cid in self._cache}
        missing = [cid for cid in conversation_ids if cid not in found]
        if missing:
            async with self.engine.connect() as db:
                rows = (
                    await db.execute(sa.select(conversations).where(conversations.c.id.in_(missing)))
                ).all()
                member_rows = await db.execute(
                    sa.select(members.c.conversation_id, members.c.user_id)
                    .where(members.c.conversation_id.in_(missing))
                    .order_by(members.c.joined_ms, members.c.user_id)
                )
            member_ids: dict[int, list[int]] = {}
            for member in member_rows:
                member_ids.setdefault(member.conversation_id, []).append(member.user_id)
            for row in rows:
                found[row.id] = _conversation(row, tuple(member_ids.get(row.id, ())))
                self._cache[row.id] = (found[row.id], row.members_version)
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        return found

    async def of_member(self, conversation_id: int, user_id: int) -> Conversation:
        """The conversation if ``user_id`` is a member; 404 otherwise, exactly as if it did not exist.

        A member of a cached conversation is answered from the cache. Anyone else costs
        one membership look-up, whether the conversation exists or not, so the time a 404
        takes tells nothing about what exists.
        """
        cached = self._cache.get(conversation_id)
        if cached is not None and user_id in cached[0].members:
            return cached[0]
        query = sa.select(members.c.user_id).where(
            members.c.conversation_id == conversation_id, members.c.user_id == user_id
        )
        async with self.engine.connect() as db:
            is_member = (await db.execute(query)).first() is not None
        if not is_member:
            raise NotFound("no such conversation")
        self.forget(conversation_id)  # a member the cached copy lacks: it is stale
        conversation = await self.get(conversation_id)
        if conversation is None or user_id not in conversation.members:
            raise NotFound("no such conversation")  # removed meanwhile
        return conversation

    async def for_sender(self, conversation_id: int, user_id: int) -> Conversation:
        """``of_member`` for a send: a cached group serves only while its membership is the
        database's (its version, read in one batched query per flush). So once a change of
        members has answered, on any instance, every send sees it: a removed member is
        refused, an added one gets the message. A direct conversation's two members never
        change, so its cached copy needs no look-up."""
        cached = self._cache.get(conversation_id)
        if (
            cached is not None
            and cached[0].type == "group"
            and await self._versions.submit(conversation_id) != cached[1]
        ):
            self.forget(conversation_id)
        return await self.of_member(conversation_id, user_id)

    async def _current_versions(self, conversation_ids: list[int]) -> list[int | None]:
        query = sa.select(conversations.c.id, conversations.c.members_version)
        async with self.engine.connect() as db:
            rows = await db.execute(query.where(conversations.c.id.in_(set(conversation_ids))))
        versions: dict[int, int] = {row.id: row.members_version for row in rows}
        return [versions.get(cid) for cid in conversation_ids]

    def forget(self, conversation_id: int) -> None:
        """Drop the cached copy (membership changed, here or on another instance)."""
        self._cache.pop(conversation_id, None)

    async def markers(self, user_id: int, conversation_ids: Sequence[int]) -> dict[int, int]:
        async with self.engine.connect() as db:
            rows = await db.execute(
                sa.select(members.c.conversation_id, members.c.read_marker).where(
                    members.c.user_id == user_id, members.c.conversation_id.in_(conversation_ids)
                )
            )
            return {row.conversation_id: row.read_marker for row in rows}

    async def views(self, user_id: int, items: Sequence[Conversation]) -> list[dict[str, object]]:
        """The protocol's Conversation objects as ``user_id`` sees them (last message, unread count)."""
        return [view for view, _ in await self._views(user_id, items)]

    async def _views(
        self, user_id: int, items: Sequence[Conversation]
    ) -> list[tuple[dict[str, object], str]]:
        """Each view with the time of its latest activity (last message, else creation)."""
        if not items:
            return []
        ids = [c.id for c in items]
        markers = await self.markers(user_id, ids)
        latest = await self.storage.latest(ids)
        unread = await self.storage.unread_counts([(c.id, user_id, markers.get(c.id, 0)) for c in items])
        return [
            (
                {
                    "id": str(c.id),
                    "type": c.type,
                    "name": c.name,
                    "members": [str(m) for m in c.members],
                    "creator_id": str(c.creator_id),
                    "created_at": c.created_at,
                    "last_message": orjson.Fragment(last) if last else None,
                    "unread_count": count,
                },
                orjson.loads(last)["created_at"] if last else c.created_at,
            )
            for c, last, count in zip(items, latest, unread, strict=True)
        ]

    async def view(self, user_id: int, conversation: Conversation) -> dict[str, object]:
        return (await self.views(user_id, [conversation]))[0]

    async def list_for(self, user_id: int) -> list[dict[str, object]]:
        """Every conversation of the user, most recent activity first."""
        async with self.engine.connect() as db:
            query = sa.select(members.c.conversation_id).where(members.c.user_id == user_id)
            ids = (await db.execute(query)).scalars().all()
        views = await self._views(user_id, list((await self.get_many(ids)).values()))
        views.sort(key=lambda pair: (pair[1], int(str(pair[0]["id"]))), reverse=True)
        return [view for view, _ in views]

    # -- changing ----------------------------------------------------------------

    async def create_direct(self, creator_id: int, other_id: int) -> tuple[Conversation, bool]:
        """The direct conversation of the two users, made if new; True when made now."""
        low, high = sorted((creator_id, other_id))
        key = f"{low}:{high}"
        try:
            cid = await self._insert("direct", None, creator_id, [creator_id, other_id], direct_key=key)
        except IntegrityError:
            async with self.engine.connect() as db:
                cid = (
                    await db.execute(sa.select(conversations.c.id).where(conversations.c.direct_key == key))
                ).scalar_one()
            conversation = await self.get(cid)
            assert conversation is not None
            return conversation, False
        conversation = await self.get(cid)
        assert conversation is not None
        await self.announce(conversation, conversation.members)
        return conversation, True

    async def create_group(self, creator_id: int, name: str, member_ids: Sequence[int]) -> Conversation:
        cid = await self._insert("group", name, creator_id, list(dict.fromkeys([creator_id, *member_ids])))
        conversation = await self.get(cid)
        assert conversation is not None
        await self.announce(conversation, conversation.members)
        return conversation

    async def _insert(
        self,
        kind: str,
        name: str | None,
        creator_id: int,
        member_ids: list[int],
        direct_key: str | None = None,
    ) -> int:
        """A new conversation and its members, in one transaction; its id."""
        now = now_ms()
        async with self.engine.begin() as db:
            result = await db.execute(
                conversations.insert().values(
                    type=kind, name=name, creator_id=creator_id, direct_key=direct_key, created_ms=now
                )
            )
            cid = inserted_id(result)
            await db.execute(
                members.insert(),
                [{"conversation_id": cid, "user_id": uid, "joined_ms": now} for uid in member_ids],
            )
        return cid

    async def add_member(self, conversation: Conversation, user_id: int) -> Conversation:
        if conversation.type != "group":
            raise InvalidRequest("members can be added to group conversations only")
        if user_id in conversation.members:
            return conversation
        if len(conversation.members) >= self.transport.max_fanout:
            raise InvalidRequest(f"a group has at most {self.transport.max_fanout} members")
        try:
            async with self.engine.begin() as db:
                await db.execute(
                    members.insert().values(
                        conversation_id=conversation.id, user_id=user_id, joined_ms=now_ms()
                    )
                )
                await db.execute(_members_changed(conversation.id))
        except IntegrityError:
            pass  # added concurrently: the same outcome
        self.forget(conversation.id)
        changed = await self.get(conversation.id)
        assert changed is not None
        await self.announce(changed, changed.members)
        return changed

    async def remove_member(self, conversation: Conversation, by: int, user_id: int) -> None:
        if conversation.type == "direct":
            raise Forbidden("a direct conversation always keeps its two members")
        if user_id != by and by != conversation.creator_id:
            raise Forbidden("only the creator may remove other members")
        if user_id not in conversation.members:
            raise NotFound("that user is not a member")
        await self._remove(conversation, user_id, heir=False)

    async def remove_deleted_user(self, conversation: Conversation, user_id: int) -> None:
        """Take a deleted account out of a group; if it made the group, the longest-standing
        member left takes its place as creator (else nobody could remove members again)."""
        await self._remove(conversation, user_id, heir=conversation.creator_id == user_id)

    async def _remove(self, conversation: Conversation, user_id: int, heir: bool) -> None:
        where = members.c.conversation_id == conversation.id
        async with self.engine.begin() as db:
            await db.execute(members.delete().where(where, members.c.user_id == user_id))
            await db.execute(_members_changed(conversation.id))
            if heir:
                first = sa.select(members.c.user_id).where(where)
                first = first.order_by(members.c.joined_ms, members.c.user_id).limit(1)
                new_creator = (await db.execute(first)).scalar()
                if new_creator is not None:
                    await db.execute(
                        conversations.update()
                        .where(conversations.c.id == conversation.id)
                        .values(creator_id=new_creator)
                    )
        self.forget(conversation.id)
        changed = await self.get(conversation.id)
        assert changed is not None
        # The one who left learns of it too: their devices drop the conversation.
        await self.announce(changed, (*changed.members, user_id))

    async def mark_read(self, conversation: Conversation, user_id: int, message_id: int) -> None:
        """Move the user's read marker forward to ``message_id`` (never backwards)."""
        if not await self.storage.contains(conversation.id, message_id):
            raise InvalidRequest("message_id: not a message of this conversation")
        async with self.engine.begin() as db:
            result = await db.execute(
                members.update()
                .where(
                    members.c.conversation_id == conversation.id,
                    members.c.user_id == user_id,
                    members.c.read_marker < message_id,
                )
                .values(read_marker=message_id)
            )
        if result.rowcount:
            event = orjson.dumps(
                {"type": "read", "conversation_id": str(conversation.id), "message_id": str(message_id)}
            )
            await self._append([LogEntry((user_id,), event)])

    async def announce(self, conversation: Conversation, user_ids: Sequence[int]) -> None:
        """Write a ``conversation`` event, as each user sees it, into each user's log."""
        self.forget(conversation.id)
        views = [await self.view(uid, conversation) for uid in user_ids]
        entries = [
            LogEntry((uid,), orjson.dumps({"type": "conversation", "conversation": view}))
            for uid, view in zip(user_ids, views, strict=True)
        ]
        for start in range(0, len(entries), self.transport.max_fanout):
            await self._append(entries[start : start + self.transport.max_fanout])

    async def _append(self, entries: Sequence[LogEntry]) -> None:
        try:
            await self.transport.append(entries)
        except Exception as e:
            raise Unavailable(f"the message queue did not answer: {type(e).__name__}") from None


def _members_changed(conversation_id: int) -> sa.Update:
    """Count one more change of the conversation's members (see ``for_sender``)."""
    version = conversations.c.members_version
    return (
        conversations.update()
        .where(conversations.c.id == conversation_id)
        .values(members_version=version + 1)
    )


def _conversation(row: sa.Row[*tuple[Any, ...]], member_ids: tuple[int, ...]) -> Conversation:
    return Conversation(
        id=row.id,
        type=row.type,
        name=row.name,
        creator_id=row.creator_id,
        members=member_ids,
        created_at=rfc3339(row.created_ms),
    )
