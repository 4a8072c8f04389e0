"""PROTOCOL.md "Accounts and sessions", row by row, against a real server over real HTTP.

Sign-up, login (a new device per login), failed-login throttling, logout, ``/me``, user
search and lookup, the 401 of every authenticated call, closed registration, and that the
server log never holds a password or a token.
"""

from __future__ import annotations

import asyncio
import json
import random
import string
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from .kibitz_client import PASSWORD, Client, Server, Socket, assert_error, make_server

# The client contract: these tests run on every supported stack (default, sql, memory); the
# sql one keeps accounts on PostgreSQL.
pytestmark = pytest.mark.protocol

ALLOWED = string.ascii_lowercase + string.digits + "_.-"


def fresh(length: int = 13) -> str:
    """A username nobody else uses: ``length`` characters of the allowed alphabet."""
    return ("u" + uuid.uuid4().hex + uuid.uuid4().hex)[:length]


def assert_user(user: dict[str, Any], username: str | None = None) -> None:
    assert set(user) >= {"id", "username", "display_name"}, user
    assert isinstance(user["id"], str) and user["id"].isdigit(), user
    assert isinstance(user["display_name"], str), user
    if username is not None:
        assert user["username"] == username, user


def assert_device(device: dict[str, Any]) -> None:
    assert set(device) >= {"id", "name", "created_at"}, device
    assert isinstance(device["id"], str) and device["id"].isdigit(), device
    assert isinstance(device["created_at"], str) and device["created_at"].endswith("Z"), device


async def sign_up(client: Client, body: Any = None, **kwargs: Any) -> httpx.Response:
    if body is not None:
        kwargs["json"] = body
    return await client.http.post("/accounts", **kwargs)


async def log_in(client: Client, body: Any = None, **kwargs: Any) -> httpx.Response:
    if body is not None:
        kwargs["json"] = body
    return await client.http.post("/sessions", **kwargs)


# -- POST /accounts ------------------------------------------------------------------------


async def test_sign_up_answers_201_with_the_user(client: Client) -> None:
    name = fresh()
    r = await sign_up(client, {"username": name, "password": PASSWORD, "display_name": "Ada L."})
    assert r.status_code == 201, r.text
    user = r.json()["user"]
    assert_user(user, name)
    assert user["display_name"] == "Ada L."


async def test_sign_up_without_display_name(client: Client) -> None:
    name = fresh()
    r = await sign_up(client, {"username": name, "password": PASSWORD})
    assert r.status_code == 201, r.text
    assert_user(r.json()["user"], name)


async def test_sign_up_ignores_unknown_fields(client: Client) -> None:
    name = fresh()
    r = await sign_up(client, {"username": name, "password": PASSWORD, "favourite_colour": "green"})
    assert r.status_code == 201, r.text
    assert_user(r.json()["user"], name)


async def test_username_bounds_and_alphabet_are_accepted(client: Client) -> None:
    shortest = "".join(random.choices(string.ascii_lowercase + string.digits, k=3))
    longest = ("a_b.c-9" + uuid.uuid4().hex + uuid.uuid4().hex)[:32]
    for name in (shortest, longest):
        r = await sign_up(client, {"username": name, "password": PASSWORD})
        # a 3-character name may, very rarely, be taken by another test of the session
        assert r.status_code in (201, 409), r.text
        if r.status_code == 201:
            assert_user(r.json()["user"], name)
    r = await sign_up(client, {"username": fresh(), "password": "x" * 8})
    assert r.status_code == 201, r.text


@pytest.mark.parametrize(
    "username",
    [
        "ab",  # too short
        "a" * 33,  # too long
        "",
        "has space",
        "bang!",
        "at@sign",
        "slash/",
        "ümlaut",
        "emoji😀x",
        12345,
        None,
        ["abc"],
        {"name": "abc"},
    ],
    ids=repr,
)
async def test_sign_up_rejects_bad_usernames(client: Client, username: Any) -> None:
    body = {"username": username, "password": PASSWORD}
    assert_error(await sign_up(client, body), 400, "invalid_request")


async def test_sign_up_rejects_a_missing_username(client: Client) -> None:
    assert_error(await sign_up(client, {"password": PASSWORD}), 400, "invalid_request")


@pytest.mark.parametrize("password", ["", "1234567", "short", 12345678, None, ["x" * 8]], ids=repr)
async def test_sign_up_rejects_bad_passwords(client: Client, password: Any) -> None:
    name = fresh()
    assert_error(await sign_up(client, {"username": name, "password": password}), 400, "invalid_request")
    # a request that fails changes nothing: the name is still free
    r = await sign_up(client, {"username": name, "password": PASSWORD})
    assert r.status_code == 201, r.text


async def test_sign_up_rejects_a_missing_password(client: Client) -> None:
    assert_error(await sign_up(client, {"username": fresh()}), 400, "invalid_request")


@pytest.mark.parametrize("body", [[], ["alice", PASSWORD], "alice", 42, None, True], ids=repr)
async def test_sign_up_rejects_a_body_that_is_not_an_object(client: Client, body: Any) -> None:
    r = await client.http.post(
        "/accounts", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert_error(r, 400, "invalid_request")


@pytest.mark.parametrize("raw", [b"{", b'{"username": "x", ', b"not json", b"", b"\xff\xfe"], ids=repr)
async def test_sign_up_rejects_malformed_json(client: Client, raw: bytes) -> None:
    r = await client.http.post("/accounts", content=raw, headers={"content-type": "application/json"})
    assert_error(r, 400, "invalid_request")


async def test_usernames_are_lower_cased_and_unique_without_regard_to_case(client: Client) -> None:
    base = fresh()
    mixed = base[0].upper() + base[1:4].upper() + base[4:]
    r = await sign_up(client, {"username": mixed, "password": PASSWORD})
    assert r.status_code == 201, r.text
    assert_user(r.json()["user"], base)  # `Alice` signs up as `alice`
    for taken in (base.upper(), base, mixed):
        assert_error(await sign_up(client, {"username": taken, "password": PASSWORD}), 409, "username_taken")
    # it is compared lower-cased at login too
    for spelling in (base.upper(), mixed):
        r = await log_in(client, {"username": spelling, "password": PASSWORD})
        assert r.status_code == 201, r.text
        assert r.json()["user"]["username"] == base


# -- POST /sessions ------------------------------------------------------------------------


async def test_log_in_answers_token_device_and_user(client: Client) -> None:
    name, user = await client.sign_up()
    r = await log_in(client, {"username": name, "password": PASSWORD, "device_name": "phone"})
    assert r.status_code == 201, r.text
    body = r.json()
    assert isinstance(body["token"], str) and body["token"], body
    assert_device(body["device"])
    assert body["device"]["name"] == "phone"
    assert body["user"] == user


async def test_log_in_without_device_name(client: Client) -> None:
    name, _ = await client.sign_up()
    r = await log_in(client, {"username": name, "password": PASSWORD})
    assert r.status_code == 201, r.text
    assert_device(r.json()["device"])


async def test_each_login_is_a_new_device_and_both_tokens_work(client: Client) -> None:
    name, user = await client.sign_up()
    first = await client.log_in(name, "laptop")
    second = await client.log_in(name, "phone")
    assert first.token != second.token
    assert first.device["id"] != second.device["id"]
    for session, device_name in ((first, "laptop"), (second, "phone")):
        r = await client.http.get("/me", headers=session.headers)
        assert r.status_code == 200, r.text
        assert r.json()["user"] == {**user, "admin": False}  # "admin": an extension of /me
        assert r.json()["device"]["id"] == session.device["id"]
        assert r.json()["device"]["name"] == device_name


@pytest.mark.parametrize(
    "body",
    [
        {"password": PASSWORD},
        {"username": "valid_name"},
        {"username": 123, "password": PASSWORD},
        {"username": "valid_name", "password": 12345678},
        {"username": "valid_name", "password": None},
        [],
        "valid_name",
    ],
    ids=repr,
)
async def test_log_in_rejects_a_bad_body(client: Client, body: Any) -> None:
    assert_error(await log_in(client, body), 400, "invalid_request")


async def test_log_in_rejects_malformed_json(client: Client) -> None:
    r = await client.http.post(
        "/sessions", content=b'{"username":', headers={"content-type": "application/json"}
    )
    assert_error(r, 400, "invalid_request")


async def test_wrong_password_and_unknown_user_get_the_same_401(client: Client) -> None:
    name, _ = await client.sign_up()
    wrong = assert_error(
        await log_in(client, {"username": name, "password": "not the password"}), 401, "unauthorized"
    )
    unknown = assert_error(
        await log_in(client, {"username": fresh(), "password": PASSWORD}), 401, "unauthorized"
    )
    assert wrong == unknown
    # and the right password still works afterwards
    await client.log_in(name)


async def test_failed_logins_are_throttled_even_for_the_right_password(client: Client) -> None:
    name, _ = await client.sign_up()
    throttled = None
    for attempt in range(1, 12):
        r = await log_in(client, {"username": name, "password": f"wrong password {attempt}"})
        if r.status_code == 429:
            throttled = attempt
            break
        assert_error(r, 401, "unauthorized")
    assert throttled is not None and throttled <= 11, "no 429 after 10 failed logins"
    r = await log_in(client, {"username": name, "password": PASSWORD})
    assert_error(r, 429, "rate_limited")
    retry_after = r.headers.get("retry-after")
    assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1, r.headers
    # the throttle is per username: another account from the same address is unaffected
    other, _ = await client.sign_up()
    await client.log_in(other)


# -- DELETE /sessions/current ----------------------------------------------------------------


async def test_log_out_revokes_only_that_device(client: Client) -> None:
    name, _ = await client.sign_up()
    leaving = await client.log_in(name, "leaving")
    staying = await client.log_in(name, "staying")
    r = await client.http.delete("/sessions/current", headers=leaving.headers)
    assert r.status_code == 204, r.text
    assert r.content == b""
    assert_error(await client.http.get("/me", headers=leaving.headers), 401, "unauthorized")
    assert_error(await client.http.delete("/sessions/current", headers=leaving.headers), 401, "unauthorized")
    r = await client.http.get("/me", headers=staying.headers)
    assert r.status_code == 200, r.text
    assert r.json()["device"]["id"] == staying.device["id"]


async def test_log_out_closes_that_devices_websocket(client: Client) -> None:
    name, _ = await client.sign_up()
    leaving = await client.log_in(name, "leaving")
    staying = await client.log_in(name, "staying")
    gone, kept = await Socket.open(client.server, leaving), await Socket.open(client.server, staying)
    r = await client.http.delete("/sessions/current", headers=leaving.headers)
    assert r.status_code == 204, r.text
    deadline = time.monotonic() + 10
    with pytest.raises(ConnectionClosed) as closed:
        while time.monotonic() < deadline:
            await gone.recv(max(0.01, deadline - time.monotonic()))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401, closed.value
    # the other device's connection stays open
    await kept.send_json({"type": "ping"})
    assert (await kept.until(lambda f: f["type"] == "pong"))["type"] == "pong"
    await kept.close()
    # and the revoked token cannot open a new one
    ws = await websockets.connect(client.server.ws_url)
    await ws.send(f'{{"type": "hello", "token": "{leaving.token}"}}')
    with pytest.raises(ConnectionClosed) as refused:
        await asyncio.wait_for(ws.recv(), 10)
    assert refused.value.rcvd is not None and refused.value.rcvd.code == 4401


# -- GET /me, GET /users, GET /users/{id} ----------------------------------------------------


async def test_me(client: Client) -> None:
    name, user = await client.sign_up(display_name="Me Myself")
    session = await client.log_in(name, "desk")
    r = await client.http.get("/me", headers=session.headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user"] == {**user, "admin": False}  # "admin": an extension of /me alone
    assert body["user"]["display_name"] == "Me Myself"
    assert_device(body["device"])
    assert body["device"] == session.device


async def search_limit_maximum(client: Client) -> int:
    """The documented upper bound of ``GET /users`` ``limit``, from the OpenAPI document."""
    doc = (await client.http.get("/openapi.json")).json()
    params = doc["paths"]["/users"]["get"]["parameters"]
    (limit,) = [p for p in params if p["name"] == "limit"]
    maximum: int = limit["schema"]["maximum"]
    return maximum


async def test_user_search_by_prefix_and_limit(client: Client) -> None:
    me = await client.user()
    prefix = "s" + uuid.uuid4().hex[:10]
    made = {}
    for suffix in ("a", "b", "c"):
        name, user = await client.sign_up(prefix + suffix)
        made[name] = user
    await client.sign_up("z" + prefix)  # contains the prefix, but does not start with it
    r = await client.http.get("/users", params={"query": prefix}, headers=me.headers)
    assert r.status_code == 200, r.text
    found = r.json()["users"]
    for user in found:
        assert_user(user)
    assert sorted(u["username"] for u in found) == sorted(made)
    assert {u["id"]: u for u in found} == {u["id"]: u for u in made.values()}
    r = await client.http.get("/users", params={"query": prefix, "limit": 2}, headers=me.headers)
    assert r.status_code == 200, r.text
    two = r.json()["users"]
    assert len(two) == 2 and {u["username"] for u in two} <= set(made)
    r = await client.http.get("/users", params={"query": prefix + "b", "limit": 1}, headers=me.headers)
    assert [u["username"] for u in r.json()["users"]] == [prefix + "b"]
    r = await client.http.get("/users", params={"query": "q" + uuid.uuid4().hex}, headers=me.headers)
    assert r.status_code == 200 and r.json() == {"users": []}, r.text


async def test_user_search_limit_out_of_range_is_400_never_clamped(client: Client) -> None:
    me = await client.user()
    maximum = await search_limit_maximum(client)
    for good in (1, maximum):
        r = await client.http.get("/users", params={"query": "u", "limit": good}, headers=me.headers)
        assert r.status_code == 200, (good, r.text)
        assert len(r.json()["users"]) <= good
    for bad in (0, -1, maximum + 1, 10**9, "abc", "1.5", " 5"):
        r = await client.http.get("/users", params={"query": "u", "limit": bad}, headers=me.headers)
        assert_error(r, 400, "invalid_request")


async def test_user_search_empty_limit_is_400(client: Client) -> None:
    """``limit=`` is a query parameter of the wrong type (not an integer), not an absent one."""
    me = await client.user()
    r = await client.http.get("/users?query=u&limit=", headers=me.headers)
    assert_error(r, 400, "invalid_request")


async def test_get_user_by_id(client: Client) -> None:
    me = await client.user()
    name, other = await client.sign_up(display_name="Other One")
    r = await client.http.get(f"/users/{other['id']}", headers=me.headers)
    assert r.status_code == 200, r.text
    assert r.json() == {"user": other}
    assert r.json()["user"]["username"] == name
    r = await client.http.get("/users/999999999999", headers=me.headers)
    assert_error(r, 404, "not_found")


AUTHENTICATED = [
    ("GET", "/me"),
    ("DELETE", "/sessions/current"),
    ("GET", "/users?query=u"),
    ("GET", "/users/1"),
]


@pytest.mark.parametrize(("method", "path"), AUTHENTICATED, ids=lambda v: str(v))
@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer not-a-real-token"},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "not-a-real-token"},
    ],
    ids=["none", "unknown", "empty", "basic", "no-scheme"],
)
async def test_authenticated_calls_answer_401_without_a_good_token(
    client: Client, method: str, path: str, headers: dict[str, str]
) -> None:
    r = await client.http.request(method, path, headers=headers)
    assert_error(r, 401, "unauthorized")


# -- registration closed, and logs ------------------------------------------------------------


@pytest.fixture(scope="module")
async def closed_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    server = make_server(tmp_path_factory.mktemp("closed") / "data", KIBITZ_REGISTRATION="closed")
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.stop)


@pytest.mark.services
async def test_closed_registration_answers_403(closed_server: Server) -> None:
    async with httpx.AsyncClient(base_url=closed_server.api, timeout=30) as http:
        r = await http.post("/accounts", json={"username": fresh(), "password": PASSWORD})
        assert_error(r, 403, "registration_closed")
        r = await http.post(
            "/accounts", json={"username": fresh(), "password": PASSWORD, "display_name": "x"}
        )
        assert_error(r, 403, "registration_closed")
        # nothing was created: nobody can log in
        r = await http.post("/sessions", json={"username": fresh(), "password": PASSWORD})
        assert_error(r, 401, "unauthorized")


async def test_passwords_and_tokens_never_reach_the_log(client: Client) -> None:
    secret = "pw-" + uuid.uuid4().hex
    name = fresh()
    r = await sign_up(client, {"username": name, "password": secret})
    assert r.status_code == 201, r.text
    wrong = "bad-" + uuid.uuid4().hex
    assert_error(await log_in(client, {"username": name, "password": wrong}), 401, "unauthorized")
    r = await log_in(client, {"username": name, "password": secret, "device_name": "logged"})
    assert r.status_code == 201, r.text
    token = r.json()["token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert (await client.http.get("/me", headers=headers)).status_code == 200
    assert (await client.http.delete("/sessions/current", headers=headers)).status_code == 204
    assert (await client.http.get("/me", headers=headers)).status_code == 401
    # a request after the logout has answered: anything logged for it is written by now
    assert (await client.http.get("/me", headers={"Authorization": "Bearer x"})).status_code == 401
    log = client.server.log()
    assert log, "the server log is empty: is it being written?"
    for leaked in (secret, wrong, token):
        assert leaked not in log


async def test_parallel_wrong_logins_are_throttled_too(client: Client) -> None:
    """Guesses sent all at once count as failures before they are checked."""
    name, _ = await client.sign_up(fresh())
    answers = await asyncio.gather(
        *(
            client.http.post("/sessions", json={"username": name, "password": "wrong password"})
            for _ in range(30)
        )
    )
    codes = [r.status_code for r in answers]
    assert codes.count(401) <= 10, codes
    assert codes.count(429) >= 20, codes
