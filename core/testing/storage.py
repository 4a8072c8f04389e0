"""The contract every Storage keeps, as tests any storage plugin runs against itself.

Subclass ``StorageContract`` in a test module, name the class ``Test...``, and give it
fixtures ``storage`` and ``empty_storage``: each yields a started Storage of your plugin
holding nothing, two at once for backup and restore::

    class TestMyStorage(StorageContract):
        @pytest.fixture
        async def storage(self, tmp_path):
            async with slot_app(tmp_path) as app, started_slot("storage", "mine", app) as s:
                yield s
"""

from __future__ import annotations

from typing import Any

import pytest

from ..models import Message
from ..slots import Page, StoredMessage
from .waiting import wait_until

CID = 7_000_000_001
IDS = list(range(10, 101, 10))  # 10, 20, ..., 100: gaps let bounds fall between ids


def message(mid: int, cid: int = CID, sender: int = 1, cmid: str | None = None) -> StoredMessage:
    m = Message(mid, cid, sender, f"body {mid}", cmid or f"c{mid}", "2026-11-24T10:00:00.000Z")
    return StoredMessage.of(m)


def ids(page: Page) -> list[int]:
    return [Message.from_json(raw).id for raw in page.messages]


class StorageContract:
    """Pages, counts, idempotency and position, as ``kibitz.slots.Storage`` defines them."""

    @pytest.fixture
    async def filled(self, storage: Any) -> Any:
        await storage.append([message(i) for i in IDS])
        return storage

    async def test_latest_page(self, filled: Any) -> None:
        page = await filled.page(CID, None, None, 3)
        assert (ids(page), page.has_more) == ([80, 90, 100], True)
        page = await filled.page(CID, None, None, 9)
        assert (ids(page), page.has_more) == (IDS[1:], True)
        for limit in (10, 11, 200):
            page = await filled.page(CID, None, None, limit)
            assert (ids(page), page.has_more) == (IDS, False)
        page = await filled.page(CID, None, None, 1)
        assert (ids(page), page.has_more) == ([100], True)

    async def test_before_page(self, filled: Any) -> None:
        page = await filled.page(CID, 100, None, 3)
        assert (ids(page), page.has_more) == ([70, 80, 90], True)
        page = await filled.page(CID, 40, None, 3)
        assert (ids(page), page.has_more) == ([10, 20, 30], False)
        page = await filled.page(CID, 40, None, 2)
        assert (ids(page), page.has_more) == ([20, 30], True)
        page = await filled.page(CID, 45, None, 4)
        assert (ids(page), page.has_more) == ([10, 20, 30, 40], False)
        page = await filled.page(CID, 10, None, 5)
        assert (ids(page), page.has_more) == ([], False)
        page = await filled.page(CID, 2**60, None, 3)  # beyond every id: as with no bound
        assert (ids(page), page.has_more) == ([80, 90, 100], True)

    async def test_after_page(self, filled: Any) -> None:
        page = await filled.page(CID, None, 10, 3)
        assert (ids(page), page.has_more) == ([20, 30, 40], True)
        page = await filled.page(CID, None, 70, 3)
        assert (ids(page), page.has_more) == ([80, 90, 100], False)
        page = await filled.page(CID, None, 65, 2)
        assert (ids(page), page.has_more) == ([70, 80], True)
        page = await filled.page(CID, None, 0, 10)
        assert (ids(page), page.has_more) == (IDS, False)
        page = await filled.page(CID, None, 0, 9)
        assert (ids(page), page.has_more) == (IDS[:9], True)
        page = await filled.page(CID, None, 100, 5)
        assert (ids(page), page.has_more) == ([], False)

    async def test_page_between(self, filled: Any) -> None:
        page = await filled.page(CID, 80, 20, 3)
        assert (ids(page), page.has_more) == ([30, 40, 50], True)
        page = await filled.page(CID, 80, 20, 4)
        assert (ids(page), page.has_more) == ([30, 40, 50, 60], True)
        page = await filled.page(CID, 80, 20, 5)  # 80 itself is excluded: nothing newer before it
        assert (ids(page), page.has_more) == ([30, 40, 50, 60, 70], False)
        page = await filled.page(CID, 75, 25, 5)
        assert (ids(page), page.has_more) == ([30, 40, 50, 60, 70], False)
        page = await filled.page(CID, 30, 20, 5)
        assert (ids(page), page.has_more) == ([], False)
        page = await filled.page(CID, 20, 80, 5)  # an empty range, bounds crossed
        assert (ids(page), page.has_more) == ([], False)

    async def test_pages_of_an_empty_conversation(self, storage: Any) -> None:
        for before, after in ((None, None), (100, None), (None, 0), (100, 0)):
            assert await storage.page(CID, before, after, 50) == Page([], False)

    async def test_page_limit_below_one_is_refused(self, storage: Any) -> None:
        with pytest.raises(ValueError):
            await storage.page(CID, None, None, 0)

    async def test_pages_return_the_stored_bytes_as_they_are(self, storage: Any) -> None:
        raw = b'{ "id": "5",  "body": "caf\\u00e9 \xf0\x9f\x8d\xb5", "extra": [1, 2] }'
        await storage.append([StoredMessage(5, CID, 1, "odd", raw)])
        assert (await storage.page(CID, None, None, 10)).messages == [raw]
        assert await storage.latest([CID]) == [raw]
        assert (await storage.find_sent([(1, "odd")]))[0] == raw

    async def test_forget_before_deletes_older_messages_everywhere(self, storage: Any) -> None:
        other = CID + 1
        await storage.append([message(i, sender=1 + i // 10 % 2) for i in IDS] + [message(5, cid=other)])
        assert await storage.forget_before(45) == 5  # 10, 20, 30, 40 and the other conversation's 5
        assert ids(await storage.page(CID, None, None, 100)) == [50, 60, 70, 80, 90, 100]
        assert (await storage.page(other, None, None, 10)).messages == []
        assert await storage.unread_counts([(CID, 1, 0), (CID, 2, 0)]) == [3, 3]  # own ones still count
        assert not await storage.contains(CID, 10)
        assert await storage.forget_before(45) == 0

    async def test_append_is_idempotent(self, storage: Any) -> None:
        batch = [message(i, sender=1 + i % 3) for i in IDS]
        await storage.append(batch)
        before = await storage.unread_counts([(CID, 1, 0), (CID, 2, 30)])
        await storage.append(batch)
        await storage.append(batch[3:6] + batch[:2])
        await storage.append([batch[-1]])
        page = await storage.page(CID, None, None, 200)
        assert page.messages == [m.json for m in batch]
        assert not page.has_more
        assert await storage.unread_counts([(CID, 1, 0), (CID, 2, 30)]) == before
        assert (await storage.find_sent([(2, "c10")]))[0] == batch[0].json

    async def test_a_claim_holds_its_key_for_its_owner_until_the_message_is_stored(
        self, storage: Any
    ) -> None:
        key = (1, "claimed")
        assert await storage.claim_sent([key], "instance-a", 60) == [True]
        assert await storage.claim_sent([key, (1, "free")], "instance-b", 60) == [False, True]
        assert await storage.claim_sent([key], "instance-a", 60) == [True]  # its own, again
        stored = message(50, cmid="claimed")
        await storage.append([stored])
        assert await storage.claim_sent([key], "instance-b", 60) == [stored.json]

    async def test_a_released_or_expired_claim_frees_its_key(self, storage: Any) -> None:
        released, expiring = (1, "released"), (1, "expiring")
        assert await storage.claim_sent([released, expiring], "instance-a", 0.3) == [True, True]
        await storage.release_sent([released], "instance-b")  # not b's to release
        assert await storage.claim_sent([released], "instance-b", 60) == [False]
        await storage.release_sent([released], "instance-a")
        assert await storage.claim_sent([released], "instance-b", 60) == [True]

        async def expired() -> bool:
            return bool(await storage.claim_sent([expiring], "instance-b", 60) == [True])

        await wait_until(expired, 10, "the claim to expire")

    async def test_ids_up_to_2_to_the_53(self, storage: Any) -> None:
        for bad in (0, 2**53 + 1):
            with pytest.raises(ValueError):
                await storage.append([message(bad)])
        await storage.append([message(2**53), message(2**53 - 1)])
        assert ids(await storage.page(CID, None, None, 5)) == [2**53 - 1, 2**53]
        assert ids(await storage.page(CID, None, 2**53 - 1, 5)) == [2**53]
        assert ids(await storage.page(CID, 2**53, None, 5)) == [2**53 - 1]

    async def test_unread_counts_exclude_own_messages(self, storage: Any) -> None:
        other = CID + 1
        senders = {10: 1, 20: 2, 30: 1, 40: 3, 50: 2, 60: 1}
        await storage.append([message(mid, sender=s) for mid, s in senders.items()])
        await storage.append([message(15, other, sender=2)])
        queries = [
            (CID, 1, 0),  # 20, 40, 50
            (CID, 2, 0),  # 10, 30, 40, 60
            (CID, 1, 30),  # 40, 50
            (CID, 3, 45),  # 50, 60
            (CID, 1, 60),  # nothing after the newest
            (CID, 4, 35),  # not a sender at all: 40, 50, 60
            (other, 1, 0),
            (other, 2, 0),
            (CID + 2, 1, 0),  # no messages
        ]
        assert await storage.unread_counts(queries) == [3, 4, 2, 2, 0, 3, 1, 0, 0]
        assert await storage.unread_counts([]) == []

    async def test_latest(self, storage: Any) -> None:
        a, b, empty = CID, CID + 1, CID + 2
        await storage.append([message(30, a), message(10, a), message(20, b), message(25, a)])
        assert await storage.latest([a, empty, b]) == [message(30, a).json, None, message(20, b).json]
        assert await storage.latest([]) == []

    async def test_contains(self, filled: Any) -> None:
        assert await filled.contains(CID, 10)
        assert await filled.contains(CID, 100)
        assert not await filled.contains(CID, 15)
        assert not await filled.contains(CID + 1, 10)
        assert not await filled.contains(CID, 0)
        assert not await filled.contains(CID, 2**60)

    async def test_find_sent(self, storage: Any) -> None:
        first = message(10, sender=1, cmid="hello-1")
        await storage.append([first, message(20, sender=2, cmid="hello-1")])
        assert (await storage.find_sent([(1, "hello-1")]))[0] == first.json
        assert (await storage.find_sent([(2, "hello-1")]))[0] == message(20, sender=2, cmid="hello-1").json
        assert (await storage.find_sent([(1, "hello-2")]))[0] is None
        assert (await storage.find_sent([(3, "hello-1")]))[0] is None
        await storage.append([message(30, sender=1, cmid="hello-1")])  # the first one stays the answer
        assert (await storage.find_sent([(1, "hello-1")]))[0] == first.json
        assert await storage.find_sent([(1, "hello-1"), (3, "x"), (2, "hello-1")]) == [
            first.json,
            None,
            message(20, sender=2, cmid="hello-1").json,
        ]
        assert await storage.find_sent([]) == []

    async def test_position_only_grows(self, storage: Any) -> None:
        assert await storage.position() == 0
        await storage.append([message(10)], through=5)
        assert await storage.position() == 5
        await storage.append([message(20)], through=3)
        assert await storage.position() == 5
        assert ids(await storage.page(CID, None, None, 5)) == [10, 20]
        await storage.append([], through=12)
        assert await storage.position() == 12
        await storage.append([message(30)])
        assert await storage.position() == 12
        await storage.append([], through=9)
        assert await storage.position() == 12
        await storage.append([], through=2**62)
        assert await storage.position() == 2**62

    async def test_check(self, storage: Any) -> None:
        await storage.check()

    async def test_backup_restores_into_an_empty_storage(self, storage: Any, empty_storage: Any) -> None:
        await storage.append([message(i, sender=1 + i % 3) for i in IDS], through=40)
        await storage.append([message(7, cid=CID + 1, cmid="seven")])
        assert not await storage.is_empty()
        assert await empty_storage.is_empty()
        count, records = await storage.backup()
        assert count >= 0
        await empty_storage.restore(records)
        assert await empty_storage.position() == 40
        for cid in (CID, CID + 1):
            assert await empty_storage.page(cid, None, None, 100) == await storage.page(cid, None, None, 100)
        queries = [(CID, 1, 0), (CID, 2, 30), (CID + 1, 2, 0)]
        assert await empty_storage.unread_counts(queries) == await storage.unread_counts(queries)
        assert await empty_storage.find_sent([(1, "seven")]) == [message(7, cid=CID + 1, cmid="seven").json]
