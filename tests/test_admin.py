"""The operator's commands (``kibitz user``, ``kibitz invite``, ``kibitz migrate``), run as
an operator runs them: as processes, against a running server and against a stopped one."""

from __future__ import annotations

import re
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

from .kibitz_client import KIBITZ, PASSWORD, Client, Server, Socket, assert_error, close_code, make_server

NEW_PASSWORD = "a brand new passphrase"

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


def kibitz(server: Server, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    """Run ``kibitz ARGS`` with the server's settings; fails the test unless it exits 0."""
    done = subprocess.run(
        [KIBITZ, *args], env=server.env, input=stdin, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"kibitz {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
    return done


def invitation(server: Server, *args: str) -> str:
    """A new invitation code, read off what ``kibitz invite create`` prints."""
    out = kibitz(server, "invite", "create", *args).stdout
    code = re.search(r"code (\S+)", out)
    assert code is not None, out
    assert f"{server.url}/#invite={code[1]}" in out, out
    return code[1]


@pytest.fixture(scope="module")
async def invite_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    """A server of its own (embedded NATS and Redis) that signs people up by invitation."""
    server = make_server(tmp_path_factory.mktemp("admin") / "data", KIBITZ_REGISTRATION="invite")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def operator(invite_server: Server) -> AsyncIterator[Client]:
    client = Client(invite_server)
    yield client
    await client.close()


async def sign_up(client: Client, name: str, code: str | None) -> int:
    body = {"username": name, "password": PASSWORD, **({"invitation": code} if code else {})}
    r = await client.http.post("/accounts", json=body)
    return r.status_code


async def test_invite_mode_signs_up_only_with_a_usable_code(invite_server: Server, operator: Client) -> None:
    assert (await operator.http.get("/discovery")).json()["registration"] == "invite"
    r = await operator.http.post("/accounts", json={"username": "nocode", "password": PASSWORD})
    assert "invitation" in assert_error(r, 403, "registration_closed")["message"]
    assert await sign_up(operator, "wrongcode", "not-a-code") == 403

    two = invitation(invite_server, "--uses", "2")
    assert await sign_up(operator, "first", two) == 201
    assert await sign_up(operator, "first", two) == 409  # a failed sign-up uses nothing...
    assert await sign_up(operator, "second", two) == 201  # ...so the second use is still there
    assert await sign_up(operator, "third", two) == 403  # used up

    expired = invitation(invite_server, "--expires", "0s")
    assert await sign_up(operator, "late", expired) == 403
    revoked = invitation(invite_server)
    listed = kibitz(invite_server, "invite", "list", "--json").stdout.splitlines()
    revoked_id = orjson.loads(listed[-1])["id"]
    assert "Revoked" in kibitz(invite_server, "invite", "revoke", revoked_id).stdout
    assert await sign_up(operator, "revoked", revoked) == 403

    table = kibitz(invite_server, "invite", "list").stdout
    for state in ("used up", "expired", "revoked"):
        assert state in table, table
    assert kibitz(invite_server, "user", "list").stdout.count("\n") >= 3  # header, first, second


async def test_disable_closes_connections_and_logs_out_every_device(
    invite_server: Server, operator: Client
) -> None:
    kibitz(invite_server, "user", "create", "dana", "--display-name", "Dana", stdin=PASSWORD + "\n")
    phone, laptop = await operator.log_in("dana", "phone"), await operator.log_in("dana", "laptop")
    socket = await Socket.open(invite_server, phone)

    out = kibitz(invite_server, "user", "disable", "dana").stdout
    assert "2 devices logged out" in out, out
    code, _ = await close_code(socket.ws)
    assert code == 4401
    assert_error(await operator.http.get("/me", headers=laptop.headers), 401, "unauthorized")
    r = await operator.http.post("/sessions", json={"username": "dana", "password": PASSWORD})
    assert "disabled" in assert_error(r, 403, "forbidden")["message"]
    assert "disabled" in kibitz(invite_server, "user", "list").stdout

    kibitz(invite_server, "user", "enable", "dana")
    await operator.log_in("dana")


async def test_reset_password_logs_out_every_device(invite_server: Server, operator: Client) -> None:
    kibitz(invite_server, "user", "create", "erin", stdin=PASSWORD + "\n")
    old = await operator.log_in("erin")
    out = kibitz(invite_server, "user", "reset-password", "erin", stdin=NEW_PASSWORD + "\n").stdout
    assert "1 devices logged out" in out, out
    assert_error(await operator.http.get("/me", headers=old.headers), 401, "unauthorized")
    r = await operator.http.post("/sessions", json={"username": "erin", "password": PASSWORD})
    assert_error(r, 401, "unauthorized")
    r = await operator.http.post("/sessions", json={"username": "erin", "password": NEW_PASSWORD})
    assert r.status_code == 201, r.text


async def test_delete_takes_the_account_out_of_groups_and_keeps_the_others_history(
    invite_server: Server, operator: Client
) -> None:
    for name in ("gina", "hank", "ivan"):
        kibitz(invite_server, "user", "create", name, stdin=PASSWORD + "\n")
    gina, hank, ivan = [await operator.log_in(name) for name in ("gina", "hank", "ivan")]
    group = await operator.group(gina, [hank, ivan], "made by gina")
    direct = await operator.direct(gina, hank)
    await operator.send(gina, direct, "hello hank")
    watcher = await Socket.open(invite_server, hank)

    out = kibitz(invite_server, "user", "delete", "gina", "--yes").stdout
    assert "1 groups left" in out, out
    frame = await watcher.until(
        lambda f: (
            f["type"] == "event"
            and f["event"]["type"] == "conversation"
            and gina.id not in f["event"]["conversation"]["members"]
        )
    )
    conversation = frame["event"]["conversation"]
    assert conversation["id"] == group
    assert conversation["creator_id"] == hank.id  # the longest-standing member left
    await watcher.close()

    assert_error(await operator.http.get("/me", headers=gina.headers), 401, "unauthorized")
    r = await operator.http.get(f"/users/{gina.id}", headers=hank.headers)
    assert r.json()["user"]["display_name"] == "Deleted user"
    r = await operator.http.get("/users", params={"query": "gina"}, headers=hank.headers)
    assert r.json()["users"] == []
    history = await operator.history(hank, direct)
    assert [m["body"] for m in history["messages"]] == ["hello hank"]
    r = await operator.http.delete(f"/conversations/{group}/members/{ivan.id}", headers=hank.headers)
    assert r.status_code == 204, r.text  # hank may now remove members
    assert "gina" not in kibitz(invite_server, "user", "list").stdout
    kibitz(invite_server, "user", "create", "gina", stdin=PASSWORD + "\n")  # the name is free again
    assert (await operator.log_in("gina")).id != gina.id


def test_bad_requests_exit_1_and_say_why(invite_server: Server) -> None:
    for args, stdin, says in (
        (("user", "disable", "nobody"), "", "no user 'nobody'"),
        (("user", "create", "jo"), PASSWORD + "\n", "username"),
        (("user", "create", "shortpw"), "short\n", "password"),
        (("user", "delete", "shortpw"), "", "--yes"),
        (("invite", "revoke", "999999"), "", "no active invitation"),
    ):
        done = subprocess.run(
            [KIBITZ, *args], env=invite_server.env, input=stdin, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 1, (args, done.stdout, done.stderr)
        assert says in done.stderr, (args, done.stderr)


def test_commands_work_on_a_stopped_server_and_serve_sees_their_work(tmp_path: Path) -> None:
    server = make_server(tmp_path / "data", KIBITZ_REGISTRATION="closed")
    kibitz(server, "user", "create", "root", "--admin", stdin=PASSWORD + "\n")
    assert "yes" in kibitz(server, "user", "list").stdout  # the admin column
    server.start()
    try:
        r = httpx.post(server.api + "/sessions", json={"username": "root", "password": PASSWORD}, timeout=30)
        assert r.status_code == 201, r.text
    finally:
        server.stop()


def test_migrate_and_a_schema_from_a_newer_kibitz(tmp_path: Path) -> None:
    server = make_server(tmp_path / "data")
    assert kibitz(server, "migrate").stdout.strip() == "schema None -> 0006"
    assert kibitz(server, "migrate").stdout.strip() == "the schema is up to date (0006)"
    database = tmp_path / "data" / "kibitz.sqlite3"
    with sqlite3.connect(database) as db:
        db.execute("UPDATE alembic_version SET version_num = '9999'")
    for args in (("migrate",), ("serve",)):
        done = subprocess.run([KIBITZ, *args], env=server.env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, (args, done.stderr)
        assert "newer Kibitz" in done.stderr, done.stderr
    with sqlite3.connect(database) as db:
        assert db.execute("SELECT version_num FROM alembic_version").fetchall() == [("9999",)]


async def test_an_administrator_invites_through_the_api(invite_server: Server, operator: Client) -> None:
    kibitz(invite_server, "user", "create", "boss", "--admin", stdin=PASSWORD + "\n")
    kibitz(invite_server, "user", "create", "worker", stdin=PASSWORD + "\n")
    boss, worker = await operator.log_in("boss"), await operator.log_in("worker")
    assert (await operator.http.get("/me", headers=boss.headers)).json()["user"]["admin"] is True
    assert (await operator.http.get("/me", headers=worker.headers)).json()["user"]["admin"] is False

    assert_error(await operator.http.post("/invitations", json={}, headers=worker.headers), 403, "forbidden")
    assert_error(await operator.http.get("/invitations", headers=worker.headers), 403, "forbidden")
    for bad in ({"uses": 0}, {"uses": "2"}, {"uses": 1001}, {"expires_in": 5}):
        r = await operator.http.post("/invitations", json=bad, headers=boss.headers)
        assert_error(r, 400, "invalid_request")
    r = await operator.http.post("/invitations", json={"uses": 2, "expires_in": 3600}, headers=boss.headers)
    assert r.status_code == 201, r.text
    made = r.json()
    assert made["link"] == f"{invite_server.url}/#invite={made['code']}"
    assert made["invitation"]["uses_allowed"] == 2 and made["invitation"]["expires_at"]
    assert await sign_up(operator, "invitee", made["code"]) == 201

    listed = (await operator.http.get("/invitations", headers=boss.headers)).json()["invitations"]
    (mine,) = [i for i in listed if i["id"] == made["invitation"]["id"]]
    assert mine["uses"] == 1 and mine["state"] == "active"
    path = f"/invitations/{mine['id']}"
    assert (await operator.http.delete(path, headers=boss.headers)).status_code == 204
    assert_error(await operator.http.delete(path, headers=boss.headers), 404, "not_found")
    assert await sign_up(operator, "toolate", made["code"]) == 403
