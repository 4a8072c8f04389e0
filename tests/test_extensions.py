"""The built-in extensions, each enabled by configuration on a real server in this process
(the fast tier): slash commands and moderation."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kibitz import ConfigError
from kibitz.testing import Client, Session, running_server
from kibitz.testing.client import assert_error


async def post(client: Client, who: Session, cid: str, body: str) -> httpx.Response:
    payload = {"body": body, "client_msg_id": uuid.uuid4().hex}
    return await client.http.post(f"/conversations/{cid}/messages", json=payload, headers=who.headers)


async def send(client: Client, who: Session, cid: str, body: str) -> tuple[int, dict[str, Any]]:
    r = await post(client, who, cid, body)
    return r.status_code, r.json()


@pytest.fixture
async def chat(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[tuple[Client, Session, str]]:
    """Alice and Bob's direct conversation on a server with the given settings."""
    async with running_server(tmp_path, request.param) as server:
        client = Client(server)
        alice, bob = await client.user(), await client.user()
        cid = await client.direct(alice, bob)
        yield client, alice, cid
        await client.close()


@pytest.mark.parametrize("chat", [{"KIBITZ_PLUGINS": "commands"}], indirect=True)
async def test_commands_me_shrug_help_and_unknown(chat: tuple[Client, Session, str]) -> None:
    client, alice, cid = chat
    status, body = await send(client, alice, cid, "/me waves")
    assert status == 201 and body["message"]["body"] == f"_{alice.user['display_name']} waves_"
    status, body = await send(client, alice, cid, "/shrug no idea")
    assert status == 201 and body["message"]["body"] == "no idea ¯\\_(ツ)_/¯"
    status, body = await send(client, alice, cid, "//etc/hosts is a file")
    assert status == 201 and body["message"]["body"] == "/etc/hosts is a file"
    r = await post(client, alice, cid, "/help")
    listed = assert_error(r, 403, "forbidden")["message"]
    assert "/me TEXT" in listed and "/shrug [TEXT]" in listed and "/help" in listed
    r = await client.http.post(
        f"/conversations/{cid}/messages",
        json={"body": "/frobnicate x", "client_msg_id": "f"},
        headers=alice.headers,
    )
    assert "/help" in assert_error(r, 403, "forbidden")["message"]
    history = await client.whole_history(alice, cid)
    assert [m["body"] for m in history] == [
        f"_{alice.user['display_name']} waves_",
        "no idea ¯\\_(ツ)_/¯",
        "/etc/hosts is a file",
    ]  # neither /help nor the unknown command was sent


@pytest.mark.parametrize("chat", [{}], indirect=True)
async def test_without_the_commands_plugin_a_slash_is_text(chat: tuple[Client, Session, str]) -> None:
    client, alice, cid = chat
    status, body = await send(client, alice, cid, "/me waves")
    assert status == 201 and body["message"]["body"] == "/me waves"


MODERATED = {
    "KIBITZ_PLUGINS": "moderation",
    "KIBITZ_MODERATION_WORDS": "darn,heck",
    "KIBITZ_MODERATION_PATTERNS": r"\d{4}-\d{4}",
}


@pytest.mark.parametrize("chat", [MODERATED], indirect=True)
async def test_moderation_rejects_with_the_reason(chat: tuple[Client, Session, str]) -> None:
    client, alice, cid = chat
    for body in ("oh DARN it", "card 1234-5678 please"):
        r = await client.http.post(
            f"/conversations/{cid}/messages",
            json={"body": body, "client_msg_id": body[:8]},
            headers=alice.headers,
        )
        assert "does not accept" in assert_error(r, 403, "forbidden")["message"]
    status, _ = await send(client, alice, cid, "darned good, heckle")  # whole words only
    assert status == 201
    assert [m["body"] for m in await client.whole_history(alice, cid)] == ["darned good, heckle"]


@pytest.mark.parametrize("chat", [MODERATED | {"KIBITZ_MODERATION_ACTION": "mask"}], indirect=True)
async def test_moderation_masks(chat: tuple[Client, Session, str]) -> None:
    client, alice, cid = chat
    status, body = await send(client, alice, cid, "oh heck, call 1234-5678")
    assert status == 201 and body["message"]["body"] == "oh ****, call *********"


@pytest.mark.parametrize(
    ("environ", "problem"),
    [
        ({"KIBITZ_MODERATION_ACTION": "ban"}, "KIBITZ_MODERATION_ACTION='ban': Invalid enum value 'ban'"),
        (
            {"KIBITZ_MODERATION_PATTERNS": "(unclosed"},
            "KIBITZ_MODERATION_PATTERNS: '(unclosed' is not a pattern",
        ),
        (
            {"KIBITZ_MODERATION_WRODS": "x"},
            "KIBITZ_MODERATION_WRODS: the moderation plugin has no such setting",
        ),
    ],
)
async def test_bad_moderation_settings_stop_start_up_naming_the_key(
    tmp_path: Path, environ: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError) as error:
        async with running_server(tmp_path, {"KIBITZ_PLUGINS": "moderation", **environ}):
            pass
    assert str(error.value).startswith(problem), str(error.value)
