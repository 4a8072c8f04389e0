"""``SendOrder``: one connection's concurrent sends join the log in frame order, and a
resend whose frame overtakes the first one cannot stall the connection. And stopping
lets the sends in flight finish before the slots stop.

These drive the send path of a real in-process ``Kibitz`` (its own embedded NATS and
Redis, SQLite) directly, to make the interleavings a WebSocket produces by chance.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kibitz.app import Kibitz
from kibitz.messages import SendOrder
from kibitz.models import Conversation, User
from kibitz.settings import load_settings
from kibitz.testing import wait_until

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


@pytest.fixture
async def kibitz(tmp_path: Path) -> AsyncIterator[Kibitz]:
    k = Kibitz(
        load_settings(environ={"KIBITZ_DATA_DIR": str(tmp_path / "data"), "KIBITZ_RATE_LIMITS": "off"})
    )
    await k.start()
    yield k
    await k.drain()
    await k.stop()


async def pair(kibitz: Kibitz) -> tuple[User, Conversation]:
    alice = await kibitz.accounts.create("alice", "correct horse", None, admin=False)
    bob = await kibitz.accounts.create("bob", "correct horse", None, admin=False)
    conversation, _ = await kibitz.conversations.create_direct(alice.id, bob.id)
    return alice, conversation


async def test_a_resend_that_overtakes_its_first_frame_does_not_stall_the_connection(kibitz: Kibitz) -> None:
    alice, conversation = await pair(kibitz)
    order = SendOrder()
    first, resend, later = order.take(), order.take(), order.take()
    # The resend's frame reaches the send path first (its conversation lookup was quicker)
    # and starts the work, which waits for the first frame's turn...
    second = asyncio.create_task(kibitz.messages.send(alice, conversation, "hi", "same", resend))
    await wait_until(lambda: (alice.id, "same") in kibitz.messages._in_flight, what="the resend in flight")
    # ... then the first frame arrives with that turn, and the connection sends on.
    answers = await asyncio.wait_for(
        asyncio.gather(
            kibitz.messages.send(alice, conversation, "hi", "same", first),
            second,
            kibitz.messages.send(alice, conversation, "next", "other", later),
        ),
        30,
    )
    (message, _, new), (again, _, repeated), (after, _, _) = answers
    assert again == message and [new, repeated].count(True) == 1
    assert after.id > message.id


async def test_turns_put_the_ids_in_frame_order_whatever_order_the_sends_start(kibitz: Kibitz) -> None:
    alice, conversation = await pair(kibitz)
    order = SendOrder()
    turns = [order.take() for _ in range(20)]
    sends = [
        kibitz.messages.send(alice, conversation, f"message {n}", f"m{n}", turns[n])
        for n in reversed(range(20))  # the last frame's send starts first
    ]
    answers = await asyncio.wait_for(asyncio.gather(*sends), 30)
    by_frame = sorted(answers, key=lambda answer: int(answer[0].client_msg_id[1:]))
    ids = [message.id for message, _, _ in by_frame]
    assert ids == sorted(ids)


async def test_stopping_lets_the_sends_in_flight_finish(tmp_path: Path) -> None:
    k = Kibitz(
        load_settings(environ={"KIBITZ_DATA_DIR": str(tmp_path / "data"), "KIBITZ_RATE_LIMITS": "off"})
    )
    await k.start()
    try:
        alice, conversation = await pair(k)
        sends = [
            asyncio.create_task(k.messages.send(alice, conversation, f"last words {n}", f"w{n}"))
            for n in range(50)
        ]
        await asyncio.sleep(0)  # one turn of the loop: every send has started, none has ended
        assert len(k.messages._in_flight) == 50
        await k.drain()
    finally:
        await k.stop()
    answers = await asyncio.gather(*sends)
    assert len({message.id for message, _, _ in answers}) == 50


async def test_a_turn_let_go_early_passes_only_after_the_turns_ahead() -> None:
    """A resend lets go of its turn at once: the send after it must still wait for those
    before it, or it would get its id ahead of them (seen with 120 pipelined frames)."""
    order = SendOrder()
    first, resend, after = order.take(), order.take(), order.take()
    resend.release()
    waiting = asyncio.create_task(after.wait())
    for _ in range(5):
        await asyncio.sleep(0)  # let the loop run the waiter: a yield, not a wait for time
    assert not waiting.done(), "the send after a resend overtook the send before it"
    first.release()
    await asyncio.wait_for(waiting, 5)
    assert resend.passed.done()
