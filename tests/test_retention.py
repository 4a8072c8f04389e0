"""``history_retention``: a server that keeps history for seconds only deletes what is older,
in every conversation, and keeps the rest; by default history is kept forever."""

from __future__ import annotations

from pathlib import Path

import pytest

from kibitz.settings import load_settings
from kibitz.testing import wait_until

from .kibitz_client import serving

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


def test_history_is_kept_forever_unless_a_retention_is_set() -> None:
    assert load_settings(environ={}).history_retention == 0
    assert load_settings(environ={"KIBITZ_HISTORY_RETENTION": "forever"}).history_retention == 0
    assert load_settings(environ={"KIBITZ_HISTORY_RETENTION": "400d"}).history_retention == 400 * 86400


async def test_messages_older_than_the_retention_are_deleted(tmp_path: Path) -> None:
    async with serving(tmp_path / "data", KIBITZ_HISTORY_RETENTION="3s") as (_, client):
        alice, bob = await client.users(2)
        direct = await client.direct(alice, bob)
        group = await client.group(alice, [bob], "short memory")
        old = [await client.send(alice, cid, "soon gone") for cid in (direct, group)]

        async def gone() -> bool:
            pages = [await client.history(bob, cid) for cid in (direct, group)]
            return all(m["id"] not in {o["id"] for o in old} for page in pages for m in page["messages"])

        await wait_until(gone, 30, "messages older than 3 s to be deleted")
        kept = await client.send(bob, direct, "just sent")
        assert [m["id"] for m in (await client.history(alice, direct))["messages"]] == [kept["id"]]
        views = (await client.http.get("/conversations", headers=alice.headers)).json()["conversations"]
        (view,) = [c for c in views if c["id"] == direct]
        assert view["last_message"]["id"] == kept["id"] and view["unread_count"] == 1
