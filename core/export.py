"""``kibitz export``: one conversation's history, or everything a user can read, as JSON lines.

Each line is one object with a ``type``: ``user`` (first, for a user's export), then for
each conversation a ``conversation`` line followed by its ``message`` lines, oldest first,
each message exactly as the API serves it. Readers take the lines they know.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import orjson
import sqlalchemy as sa

from .backup import BackupError, private_file
from .database import members
from .models import Conversation
from .progress import Progress

if TYPE_CHECKING:
    from .app import Kibitz

PAGE = 500


async def export(
    app: Kibitz, file: Path, conversation_id: str | None, user_id: int | None, progress: Progress
) -> dict[str, Any]:
    """Write the export (of a conversation, or of a user's conversations) to ``file``, which
    must not exist; what was written, counted."""
    header, conversation_ids = await _what(app, conversation_id, user_id)
    try:
        out = await asyncio.to_thread(private_file, file)
    except OSError as e:
        raise BackupError(f"cannot write {file}: {e.strerror}") from None
    written = 0
    try:
        if header is not None:
            await asyncio.to_thread(out.write, orjson.dumps(header) + b"\n")
        found = await app.conversations.get_many(conversation_ids)
        for done, cid in enumerate(sorted(found), 1):
            written += await _conversation(app, out, found[cid])
            progress("conversations", done, len(found))
    finally:
        await asyncio.to_thread(out.close)
    return {"file": str(file), "conversations": len(found), "messages": written}


async def _what(
    app: Kibitz, conversation_id: str | None, user_id: int | None
) -> tuple[dict[str, Any] | None, Sequence[int]]:
    """The user line (for a user's export) and the conversations to write."""
    if user_id is None:
        cid = str(conversation_id)
        if not cid.isdigit() or await app.conversations.get(int(cid)) is None:
            raise BackupError(f"there is no conversation {conversation_id!r}")
        return None, [int(cid)]
    user = await app.accounts.get(user_id)
    async with app.engine.connect() as db:
        mine = sa.select(members.c.conversation_id).where(members.c.user_id == user_id)
        conversation_ids = (await db.execute(mine)).scalars().all()
    return {"type": "user", "user": user.to_dict()}, conversation_ids


async def _conversation(app: Kibitz, out: IO[bytes], conversation: Conversation) -> int:
    head = {
        "type": "conversation",
        "conversation": {
            "id": str(conversation.id),
            "type": conversation.type,
            "name": conversation.name,
            "creator_id": str(conversation.creator_id),
            "members": [str(m) for m in conversation.members],
            "created_at": conversation.created_at,
        },
    }
    await asyncio.to_thread(out.write, orjson.dumps(head) + b"\n")
    after, count = 0, 0
    while True:
        page = await app.storage.page(conversation.id, None, after, PAGE)
        if page.messages:
            lines = b"".join(b'{"type":"message","message":%s}\n' % m for m in page.messages)
            await asyncio.to_thread(out.write, lines)
            count += len(page.messages)
            after = int(orjson.loads(page.messages[-1])["id"])
        if not page.has_more:
            return count
