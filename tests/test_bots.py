"""Bots: users marked ``"bot": true`` in every User object (an extension of the protocol),
made by ``kibitz user create --bot`` (or a plugin's ``App.bot``), whom nobody logs in as."""

from __future__ import annotations

import re
import subprocess
import uuid

import orjson
import pytest

from .kibitz_client import KIBITZ, PASSWORD, Client, Server, Socket, assert_error
from .test_admin import kibitz

pytestmark = pytest.mark.services  # kibitz commands, as processes


async def test_every_user_object_says_whether_it_is_a_bot(client: Client) -> None:
    name, signed_up = await client.sign_up()
    session = await client.log_in(name)
    me = (await client.http.get("/me", headers=session.headers)).json()["user"]
    found = (await client.http.get("/users", params={"query": name}, headers=session.headers)).json()
    by_id = (await client.http.get(f"/users/{session.id}", headers=session.headers)).json()["user"]
    socket = await Socket.open(client.server, session)
    await socket.close()
    for user in (signed_up, session.user, me, *found["users"], by_id, socket.ready["user"]):
        assert user["bot"] is False, user


async def test_the_cli_makes_a_bot_that_nobody_logs_in_as(server: Server, client: Client) -> None:
    name = "bot" + uuid.uuid4().hex[:10]
    out = kibitz(server, "user", "create", name, "--bot", "--display-name", "CI alerts").stdout
    made = re.fullmatch(rf"Made bot {name} \(id (\d+)\)\.\n", out)
    assert made, out
    bot_id = made[1]
    alice = await client.user()
    r = await client.http.get(f"/users/{bot_id}", headers=alice.headers)
    assert r.json()["user"] == {"id": bot_id, "username": name, "display_name": "CI alerts", "bot": True}
    r = await client.http.get("/users", params={"query": name}, headers=alice.headers)
    assert [u["bot"] for u in r.json()["users"]] == [True]
    listed = [orjson.loads(line) for line in kibitz(server, "user", "list", "--json").stdout.splitlines()]
    assert [u["bot"] for u in listed if u["username"] == name] == [True]

    # It has no password: every one is refused, as for a username nobody has
    for password in (PASSWORD, "!", "x" * 8):
        r = await client.http.post("/sessions", json={"username": name, "password": password})
        assert_error(r, 401, "unauthorized")

    # A member of a group like anyone else
    r = await client.http.post(
        "/conversations",
        json={"type": "group", "name": "with a bot", "members": [bot_id]},
        headers=alice.headers,
    )
    assert r.status_code == 201, r.text
    assert bot_id in r.json()["conversation"]["members"]


def test_a_bot_has_no_password_and_is_no_administrator(server: Server) -> None:
    name = "bot" + uuid.uuid4().hex[:10]
    both = subprocess.run(
        [KIBITZ, "user", "create", name, "--bot", "--admin"],
        env=server.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert both.returncode == 2 and "not allowed with argument" in both.stderr, both.stderr
    kibitz(server, "user", "create", name, "--bot")
    reset = subprocess.run(
        [KIBITZ, "user", "reset-password", name],
        env=server.env,
        input=PASSWORD + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert reset.returncode == 1 and f"{name} is a bot: it has no password" in reset.stderr, reset.stderr
