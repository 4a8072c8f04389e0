"""The ``incoming_webhooks`` extension on a real ``kibitz serve``: a member makes a secret
URL, whoever holds it posts into the group as the webhook's bot, and the members get the
message like any other."""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from kibitz.operations import logged_path

from .conftest import fresh_postgres_database
from .kibitz_client import Client, Session, Socket, assert_error, serving
from .test_admin import kibitz

pytestmark = pytest.mark.services  # a kibitz serve of its own


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def database(request: pytest.FixtureRequest) -> AsyncIterator[dict[str, str]]:
    """The plugin's table on SQLite, and on PostgreSQL when there is a server: a database
    of the module's own (a table no migration knows would upset the schema tests)."""
    base = os.environ.get("KIBITZ_TEST_DATABASE_URL")
    if request.param == "sqlite":
        yield {}
    elif not base:
        pytest.skip("KIBITZ_TEST_DATABASE_URL is not set")
    else:
        async with fresh_postgres_database(base) as url:
            yield {"KIBITZ_DATABASE_URL": url}


@pytest.fixture(scope="module")
async def hooks(tmp_path_factory: pytest.TempPathFactory, database: dict[str, str]) -> AsyncIterator[Client]:
    """A client of a server of the module's own, with the extension enabled."""
    data = tmp_path_factory.mktemp("hooks") / "data"
    async with serving(data, KIBITZ_PLUGINS="incoming_webhooks", **database) as (_, client):
        yield client


async def make_webhook(client: Client, who: Session, cid: str, name: str = "CI alerts") -> dict[str, Any]:
    r = await client.http.post(f"/conversations/{cid}/webhooks", json={"name": name}, headers=who.headers)
    assert r.status_code == 201, r.text
    made: dict[str, Any] = r.json()
    return made


async def call(url: str, body: Any) -> httpx.Response:
    """A POST to the webhook's URL, as a CI job makes it: no token."""
    async with httpx.AsyncClient(timeout=30) as http:
        return await http.post(url, json=body)


async def test_a_post_to_the_url_reaches_every_member_as_the_bot(hooks: Client) -> None:
    alice, bob = await hooks.users(2)
    cid = await hooks.group(alice, [bob], "builds")
    watcher = await Socket.open(hooks.server, bob)
    made = await make_webhook(hooks, alice, cid)
    webhook = made["webhook"]
    assert webhook["name"] == "CI alerts" and webhook["conversation_id"] == cid
    assert webhook["creator_id"] == alice.id
    secret = re.fullmatch(rf"{hooks.server.api}/hooks/{webhook['id']}/([A-Za-z0-9_-]{{32}})", made["url"])
    assert secret, made["url"]

    joined = await watcher.until(
        lambda f: (
            f["type"] == "event"
            and f["event"]["type"] == "conversation"
            and webhook["bot_id"] in f["event"]["conversation"]["members"]
        )
    )
    assert joined["event"]["conversation"]["id"] == cid
    r = await hooks.http.get(f"/users/{webhook['bot_id']}", headers=bob.headers)
    assert r.json()["user"]["bot"] is True and r.json()["user"]["display_name"] == "CI alerts"

    r = await call(made["url"], {"text": "build 41 failed"})
    assert r.status_code == 200, r.text
    posted = r.json()["message"]
    assert posted["sender_id"] == webhook["bot_id"] and posted["body"] == "build 41 failed"
    [live] = await watcher.messages(1)
    assert live == posted
    await watcher.close()
    assert (await hooks.history(alice, cid))["messages"] == [posted]

    # "body", the protocol's name, works too; and a client_msg_id makes a retry safe
    first = (await call(made["url"], {"body": "build 42 passed", "client_msg_id": "b42"})).json()["message"]
    again = await call(made["url"], {"body": "build 42 passed", "client_msg_id": "b42"})
    assert again.status_code == 200 and again.json()["message"] == first
    assert [m["body"] for m in (await hooks.history(bob, cid))["messages"]] == [
        "build 41 failed",
        "build 42 passed",
    ]
    assert secret[1] not in hooks.server.log()


async def test_the_secret_is_shown_once_and_only_the_right_one_posts(hooks: Client) -> None:
    alice, bob = await hooks.users(2)
    cid = await hooks.group(alice, [bob])
    made = await make_webhook(hooks, alice, cid, "monitor")
    r = await hooks.http.get(f"/conversations/{cid}/webhooks", headers=bob.headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"webhooks": [made["webhook"]]}  # no URL, no secret
    assert made["url"].rsplit("/", 1)[1] not in r.text

    base, secret = made["url"].rsplit("/", 1)
    wrong = secret[:-1] + ("A" if secret[-1] != "A" else "B")
    other_id = base.rsplit("/", 1)[0] + "/999999"
    for url in (f"{base}/{wrong}", f"{other_id}/{secret}", f"{base.rsplit('/', 1)[0]}/07/{secret}"):
        error = assert_error(await call(url, {"text": "sneaky"}), 404, "not_found")
        assert error["message"] == "no such webhook"
    assert (await hooks.history(alice, cid))["messages"] == []

    for body, status, code in (
        ({}, 400, "invalid_request"),
        ({"text": ""}, 400, "invalid_request"),
        ({"text": 5}, 400, "invalid_request"),
        ({"text": "x" * 4001}, 413, "payload_too_large"),
    ):
        assert_error(await call(made["url"], body), status, code)


async def test_a_revoked_webhook_answers_404(hooks: Client) -> None:
    alice, bob = await hooks.users(2)
    cid = await hooks.group(alice, [bob])
    made = await make_webhook(hooks, alice, cid)
    path = f"/conversations/{cid}/webhooks/{made['webhook']['id']}"
    assert (await hooks.http.delete(path, headers=bob.headers)).status_code == 204  # any member may
    assert_error(await call(made["url"], {"text": "too late"}), 404, "not_found")
    assert_error(await hooks.http.delete(path, headers=bob.headers), 404, "not_found")
    r = await hooks.http.get(f"/conversations/{cid}/webhooks", headers=alice.headers)
    assert r.json() == {"webhooks": []}
    # the bot stays a member, so what it posted keeps its sender
    conversation = (await hooks.http.get(f"/conversations/{cid}", headers=alice.headers)).json()
    assert made["webhook"]["bot_id"] in conversation["conversation"]["members"]


async def test_only_members_of_a_group_make_list_or_revoke_webhooks(hooks: Client) -> None:
    alice, bob, stranger = await hooks.users(3)
    cid = await hooks.group(alice, [bob])
    made = await make_webhook(hooks, alice, cid)
    webhooks = f"/conversations/{cid}/webhooks"
    for method, path, body in (
        ("POST", webhooks, {"name": "mine"}),
        ("GET", webhooks, None),
        ("DELETE", f"{webhooks}/{made['webhook']['id']}", None),
    ):
        r = await hooks.http.request(method, path, json=body, headers=stranger.headers)
        assert_error(r, 404, "not_found")  # as for a conversation that does not exist
        assert_error(await hooks.http.request(method, path, json=body), 401, "unauthorized")
    assert (await call(made["url"], {"text": "still works"})).status_code == 200

    direct = await hooks.direct(alice, bob)
    r = await hooks.http.post(f"/conversations/{direct}/webhooks", json={"name": "x"}, headers=alice.headers)
    assert "group" in assert_error(r, 400, "invalid_request")["message"]
    for name in ("", "   ", "x" * 65, 7):
        r = await hooks.http.post(webhooks, json={"name": name}, headers=alice.headers)
        assert_error(r, 400, "invalid_request")


async def test_the_disabled_bot_of_a_webhook_posts_nothing(hooks: Client) -> None:
    alice, bob = await hooks.users(2)
    cid = await hooks.group(alice, [bob])
    made = await make_webhook(hooks, alice, cid)
    r = await hooks.http.get(f"/users/{made['webhook']['bot_id']}", headers=alice.headers)
    kibitz(hooks.server, "user", "disable", r.json()["user"]["username"])
    assert "disabled" in assert_error(await call(made["url"], {"text": "hi"}), 403, "forbidden")["message"]


async def test_openapi_documents_the_routes_of_the_enabled_plugin(hooks: Client) -> None:
    paths = (await hooks.http.get("/openapi.json")).json()["paths"]
    assert set(paths["/conversations/{cid}/webhooks"]) == {"get", "post"}
    assert set(paths["/conversations/{cid}/webhooks/{hook_id}"]) == {"delete"}
    assert paths["/hooks/{hook_id}/{secret}"]["post"]["security"] == []


def test_a_secret_in_a_path_is_never_logged() -> None:
    request: Any = SimpleNamespace(
        path="/api/v1/hooks/7/s3cr3t", match_info={"hook_id": "7", "secret": "s3cr3t"}
    )
    assert logged_path(request) == "/api/v1/hooks/7/***"
    request = SimpleNamespace(path="/api/v1/conversations/7", match_info={"cid": "7"})
    assert logged_path(request) == "/api/v1/conversations/7"
