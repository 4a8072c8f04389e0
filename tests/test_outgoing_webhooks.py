"""The ``outgoing_webhooks`` extension on a real ``kibitz serve``: the messages of the
conversations its bot is in go, signed, to a real receiver on loopback; the receiver's
reply comes back into the conversation as the bot, and the bot's own messages go nowhere."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from kibitz.testing import wait_until

from .kibitz_client import Client, Session, Socket, make_server, serve_once, serving
from .test_webhook import SECRET, Delivery, Receiver, logged, verify

pytestmark = pytest.mark.services  # a kibitz serve of its own, and a receiver


@dataclass
class Bot(Receiver):
    """A receiver on loopback that replies ``echo: <text>`` to every message, the bot's own
    too (so a loop would never end), unless a test scripted its answers for a text."""

    scripts: dict[str, list[tuple[int, dict[str, str], bytes]]] = field(default_factory=dict)

    def answer(self, payload: dict[str, Any]) -> tuple[int, dict[str, str], bytes]:
        text = payload["message"]["body"]
        script = self.scripts.get(text, [])
        return script.pop(0) if script else (200, {}, orjson.dumps({"text": f"echo: {text}"}))

    def got(self, text: str) -> list[Delivery]:
        """The requests that carried a message with this text."""
        return [sent for sent in self.deliveries if sent.json["message"]["body"] == text]


def settings(bot: Bot, **more: str) -> dict[str, str]:
    return {
        "KIBITZ_PLUGINS": "outgoing_webhooks",
        "KIBITZ_OUTGOING_WEBHOOKS_URL": bot.url,
        "KIBITZ_OUTGOING_WEBHOOKS_SECRET": SECRET,
        "KIBITZ_PUSH_ALLOW_INSECURE": "1",
        **more,
    }


@pytest.fixture(scope="module")
async def bot() -> AsyncIterator[Bot]:
    bot = Bot()
    await bot.start()
    yield bot
    await bot.stop()


@pytest.fixture(scope="module")
async def client(tmp_path_factory: pytest.TempPathFactory, bot: Bot) -> AsyncIterator[Client]:
    """A client of a server of the module's own, that sends to ``bot``."""
    async with serving(tmp_path_factory.mktemp("outgoing") / "data", **settings(bot)) as (_, client):
        yield client


async def the_bot(client: Client, who: Session, username: str = "webhook-bot") -> dict[str, Any]:
    r = await client.http.get("/users", params={"query": username}, headers=who.headers)
    [user] = [u for u in r.json()["users"] if u["username"] == username]
    assert user["bot"] is True, user
    return dict(user)


async def group_with_the_bot(client: Client) -> tuple[Session, Session, str, str]:
    """Alice, Bob, the id of a group of theirs with the bot in it, and the bot's id."""
    alice, bob = await client.users(2)
    bot_id = (await the_bot(client, alice))["id"]
    body = {"type": "group", "name": "with the bot", "members": [bob.id, bot_id]}
    r = await client.http.post("/conversations", json=body, headers=alice.headers)
    assert r.status_code == 201, r.text
    return alice, bob, r.json()["conversation"]["id"], bot_id


async def reply_to(socket: Socket, message: dict[str, Any]) -> dict[str, Any]:
    """The bot's reply to ``message``, as a member's WebSocket gets it."""
    [reply] = await socket.messages(1)
    assert reply["client_msg_id"] == f"reply-{message['id']}", reply
    return reply


async def test_a_message_goes_out_signed_and_the_reply_comes_back_as_the_bot(
    client: Client, bot: Bot
) -> None:
    alice, bob, cid, bot_id = await group_with_the_bot(client)
    socket = await Socket.open(client.server, bob)
    message = await client.send(alice, cid, "hello bot")
    assert (await socket.messages(1)) == [message]
    reply = await reply_to(socket, message)
    assert reply["sender_id"] == bot_id and reply["body"] == "echo: hello bot"
    assert reply["conversation_id"] == cid

    [sent] = bot.got("hello bot")
    assert sent.signed
    assert not verify(b"another-secret-altogether", sent.headers["Kibitz-Signature"], sent.body)
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.json == {
        "type": "message",
        "id": sent.headers["Kibitz-Delivery"],
        "conversation_id": cid,
        "message": message,
        "sender": alice.user,
    }

    # The bot's own reply goes nowhere: a later message's reply shows that its turn passed
    witness = await client.send(bob, cid, "witness")
    await socket.messages(1)
    await reply_to(socket, witness)
    await socket.close()
    assert not [sent for sent in bot.deliveries if sent.json["message"]["sender_id"] == bot_id]
    history = [m["body"] for m in (await client.history(alice, cid))["messages"]]
    assert history == ["hello bot", "echo: hello bot", "witness", "echo: witness"]


async def test_a_direct_conversation_with_the_bot_works_too(client: Client) -> None:
    alice = await client.user()
    bot_id = (await the_bot(client, alice))["id"]
    r = await client.http.post(
        "/conversations", json={"type": "direct", "members": [bot_id]}, headers=alice.headers
    )
    cid = r.json()["conversation"]["id"]
    socket = await Socket.open(client.server, alice)
    message = await client.send(alice, cid, "just us")
    await socket.messages(1)
    assert (await reply_to(socket, message))["body"] == "echo: just us"
    await socket.close()


async def test_conversations_without_the_bot_stay_inside(client: Client, bot: Bot) -> None:
    alice, bob, cid, _ = await group_with_the_bot(client)
    private = await client.group(alice, [bob], "no bot here")
    await client.send(alice, private, "between us")
    socket = await Socket.open(client.server, bob)
    witness = await client.send(alice, cid, "witness of the private one")
    await socket.messages(1)
    await reply_to(socket, witness)
    await socket.close()
    assert bot.got("between us") == []


async def history_is(client: Client, who: Session, cid: str, bodies: list[str]) -> None:
    """Wait until the history holds exactly ``bodies``: a message reaches live connections
    once the log has it, and history a moment later, once storage has it too."""

    async def holds() -> bool:
        return [m["body"] for m in (await client.history(who, cid))["messages"]] == bodies

    await wait_until(holds, what=f"the history to be {bodies}")


async def test_a_503_is_tried_again_and_its_reply_posted_once(client: Client, bot: Bot) -> None:
    alice, bob, cid, _ = await group_with_the_bot(client)
    bot.scripts["flaky"] = [(503, {"Retry-After": "1"}, b"")]
    socket = await Socket.open(client.server, bob)
    message = await client.send(alice, cid, "flaky")
    await socket.messages(1)
    assert (await reply_to(socket, message))["body"] == "echo: flaky"
    await socket.close()
    tries = bot.got("flaky")
    assert [sent.status for sent in tries] == [503, 200]
    assert len({sent.headers["Kibitz-Delivery"] for sent in tries}) == 1
    await history_is(client, alice, cid, ["flaky", "echo: flaky"])


async def test_an_answer_without_a_reply_posts_nothing(client: Client, bot: Bot) -> None:
    alice, bob, cid, _ = await group_with_the_bot(client)
    answers = {
        "not json": (200, b"<html>ok</html>"),
        "no text": (200, b'{"reply": "hm"}'),
        "empty text": (200, b'{"text": ""}'),
        "refused": (400, b'{"text": "a 400 is not a reply"}'),
    }
    for text, (status, answer) in answers.items():
        bot.scripts[text] = [(status, {}, answer)]
        await client.send(alice, cid, text)
    socket = await Socket.open(client.server, bob)
    witness = await client.send(alice, cid, "witness of the silent ones")
    await socket.messages(1)
    await reply_to(socket, witness)
    await socket.close()
    await history_is(
        client, alice, cid, [*answers, "witness of the silent ones", "echo: witness of the silent ones"]
    )
    await wait_until(lambda: bot.got("refused"), 30, "the POST of the refused one")
    [refused] = bot.got("refused")
    delivery = refused.headers["Kibitz-Delivery"]
    await wait_until(
        lambda: logged(client.server, "outgoing_webhooks_refused", delivery), 30, "the refusal logged"
    )
    assert (
        logged(client.server, "outgoing_webhooks_refused", delivery)[0]["status"] == 400
    )  # and no retry waits


async def test_settings_choose_the_groups_the_bot_joins_and_the_messages_it_gets(tmp_path: Path) -> None:
    bot = Bot()
    await bot.start()
    try:
        async with serving(tmp_path / "data", **settings(bot)) as (server, client):
            alice, bob = await client.users(2)
            cid = await client.group(alice, [bob], "joined by settings")
            await asyncio.to_thread(server.stop)
            chosen = {"CONVERSATIONS": cid, "TRIGGER": "!ci", "BOT": "ci-bot"}
            server.env |= {f"KIBITZ_OUTGOING_WEBHOOKS_{key}": value for key, value in chosen.items()}
            await asyncio.to_thread(server.start)
            ci = await the_bot(client, alice, "ci-bot")
            assert ci["display_name"] == "Webhook bot"
            r = await client.http.get(f"/conversations/{cid}", headers=alice.headers)
            assert ci["id"] in r.json()["conversation"]["members"]

            socket = await Socket.open(server, bob)
            await client.send(alice, cid, "not for the bot")
            message = await client.send(alice, cid, "!ci deploy")
            await socket.messages(2)
            assert (await reply_to(socket, message))["body"] == "echo: !ci deploy"
            await socket.close()
            assert bot.got("not for the bot") == []
    finally:
        await bot.stop()

    # A bot name that a person has stops start-up, as a bad setting does
    status, lines = serve_once({**server.env, "KIBITZ_OUTGOING_WEBHOOKS_BOT": alice.user["username"]})
    assert status == 2 and len(lines) == 1, (status, lines)
    assert lines[0] == (
        "kibitz: configuration error: KIBITZ_OUTGOING_WEBHOOKS_BOT: "
        f"the username {alice.user['username']!r} is a person's, not a bot's"
    )


@pytest.mark.parametrize(
    ("more", "line"),
    [
        (
            {"KIBITZ_OUTGOING_WEBHOOKS_URL": ""},
            "KIBITZ_OUTGOING_WEBHOOKS_URL: the outgoing_webhooks plugin needs",
        ),
        ({"KIBITZ_OUTGOING_WEBHOOKS_SECRET": "short"}, "KIBITZ_OUTGOING_WEBHOOKS_SECRET: is 5 characters"),
        ({"KIBITZ_OUTGOING_WEBHOOKS_TRIGER": "!"}, "did you mean KIBITZ_OUTGOING_WEBHOOKS_TRIGGER?"),
        ({"KIBITZ_OUTGOING_WEBHOOKS_CONVERSATIONS": "a,b"}, "KIBITZ_OUTGOING_WEBHOOKS_CONVERSATIONS='a,b'"),
        ({"KIBITZ_OUTGOING_WEBHOOKS_CONVERSATIONS": "999999"}, "999999: no such conversation"),
    ],
    ids=["no url", "short secret", "typo", "not ids", "no such conversation"],
)
def test_bad_settings_stop_start_up_with_one_line(tmp_path: Path, more: dict[str, str], line: str) -> None:
    env = make_server(tmp_path / "data", **settings(Bot(), **more)).env
    status, lines = serve_once(env)
    assert status == 2 and len(lines) == 1, (status, lines)
    assert lines[0].startswith("kibitz: configuration error: ") and line in lines[0], lines[0]
