"""The webhook notifier: signed POSTs from a real ``kibitz serve`` to a real receiver on
loopback (checked with the receiver code of docs/security.md), its retries and refusals,
the settings that stop start-up, and the notifier's own bounds, built from its settings."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import subprocess
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import orjson
import pytest
from aiohttp import web

from kibitz import ConfigError, Conversation, Message, PluginSettings, User
from kibitz.plugins.webhook import AT_ONCE, WebhookNotifier
from kibitz.supervisor import free_port
from kibitz.testing import wait_until

from .kibitz_client import KIBITZ, Client, Server, Session, Socket, make_server

SECRET = "kibitz-webhook-test-secret"
DOCS = Path(__file__).resolve().parent.parent / "docs"

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


def documented_verify() -> Callable[..., bool]:
    """``verify(secret, header, body)``, exactly as docs/security.md gives it to receivers."""
    text = (DOCS / "security.md").read_text().split("## Webhooks", 1)[1]
    found = re.search(r"```python\n(.*?)```", text, re.S)
    assert found, "docs/security.md: no receiver example under Webhooks"
    namespace: dict[str, Any] = {}
    exec(found.group(1), namespace)
    verify: Callable[..., bool] = namespace["verify"]
    return verify


verify = documented_verify()


@dataclass
class Delivery:
    headers: dict[str, str]
    body: bytes  # as received, for the signature
    status: int  # what the receiver answered

    @property
    def json(self) -> dict[str, Any]:
        payload: dict[str, Any] = orjson.loads(self.body)
        return payload

    @property
    def signed(self) -> bool:
        return verify(SECRET.encode(), self.headers["Kibitz-Signature"], self.body)


@dataclass
class Receiver:
    """A webhook receiver on loopback. It answers 200, unless a test scripted answers for a
    message text (taken in turn); while ``gate`` is set to an unset Event it holds requests."""

    port: int = field(default_factory=free_port)
    answers: dict[str, list[tuple[int, dict[str, str]]]] = field(default_factory=dict)
    deliveries: list[Delivery] = field(default_factory=list)
    gate: asyncio.Event | None = None
    in_flight: int = 0
    most_in_flight: int = 0
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/hook", self._receive)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def of(self, message_id: str) -> list[Delivery]:
        return [d for d in self.deliveries if d.json["message_id"] == message_id]

    async def _receive(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            if self.gate is not None:
                await self.gate.wait()
        finally:
            self.in_flight -= 1
        script = self.answers.get(orjson.loads(body).get("body", ""), [])
        status, headers = script.pop(0) if script else (200, {})
        self.deliveries.append(Delivery(dict(request.headers), body, status))
        return web.Response(status=status, headers=headers)


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture
async def own_receiver() -> AsyncIterator[Receiver]:
    """A receiver for one test of the notifier alone."""
    receiver = Receiver()
    await receiver.start()
    yield receiver
    await receiver.stop()


@pytest.fixture(scope="module")
async def hook_server(tmp_path_factory: pytest.TempPathFactory, receiver: Receiver) -> AsyncIterator[Server]:
    """A server of its own that notifies through the webhook only, to the loopback receiver."""
    server = make_server(
        tmp_path_factory.mktemp("webhook") / "data",
        KIBITZ_NOTIFY="webhook",
        KIBITZ_WEBHOOK_URL=receiver.url,
        KIBITZ_WEBHOOK_SECRET=SECRET,
        KIBITZ_PUSH_ALLOW_INSECURE="1",
    )
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.stop)


@pytest.fixture
async def hook_client(hook_server: Server) -> AsyncIterator[Client]:
    client = Client(hook_server)
    yield client
    await client.close()


async def delivered(receiver: Receiver, message: dict[str, Any]) -> list[Delivery]:
    """Every request for the message, once one was answered 2xx."""
    await wait_until(
        lambda: any(200 <= d.status < 300 for d in receiver.of(message["id"])), 30, "the webhook's POST"
    )
    return receiver.of(message["id"])


def logged(server: Server, event: str, delivery: str) -> list[dict[str, Any]]:
    """The server's log lines of ``event`` about one delivery."""
    lines = [orjson.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == event and line.get("delivery") == delivery]


# -- from a real server ---------------------------------------------------------------------------


async def test_an_offline_member_gets_one_signed_post_that_names_the_message(
    hook_client: Client, receiver: Receiver
) -> None:
    client = hook_client
    alice = await client.user(display_name="Alice A.")
    offline, online, witness = await client.users(3)
    cid = await client.group(alice, [offline, online], "hooks")
    socket = await Socket.open(client.server, online)
    try:
        message = await client.send(alice, cid, "hello " + "x" * 300)
        [delivery] = await delivered(receiver, message)
        # A later message delivered: the log's batch with the first is notified, nothing more comes
        await delivered(receiver, await client.send(alice, await client.direct(alice, witness), "witness"))
    finally:
        await socket.close()
    assert receiver.of(message["id"]) == [delivery]
    assert delivery.signed
    assert delivery.headers["Content-Type"] == "application/json"
    assert delivery.json == {
        "type": "notification",
        "id": delivery.headers["Kibitz-Delivery"],
        "conversation_id": cid,
        "message_id": message["id"],
        "sender": {"id": alice.id, "display_name": "Alice A."},
        "body": message["body"][:200],
        "user_ids": [offline.id],  # not the sender, not the member online
        "sent_at": message["created_at"],
    }
    assert re.fullmatch("[0-9a-f]{32}", delivery.json["id"])
    # The signature covers the body and the key: another body or another secret fails
    header = delivery.headers["Kibitz-Signature"]
    assert not verify(SECRET.encode(), header, delivery.body + b" ")
    assert not verify(b"some-other-secret-entirely", header, delivery.body)


async def conversation(client: Client) -> tuple[Session, str]:
    alice, bob = await client.users(2)
    return alice, await client.direct(alice, bob)


async def test_a_receiver_answering_503_gets_the_same_delivery_again(
    hook_client: Client, receiver: Receiver
) -> None:
    alice, cid = await conversation(hook_client)
    receiver.answers["busy for now"] = [(503, {"Retry-After": "1"})]
    message = await hook_client.send(alice, cid, "busy for now")
    deliveries = await delivered(receiver, message)
    assert [d.status for d in deliveries] == [503, 200]
    assert len({d.headers["Kibitz-Delivery"] for d in deliveries}) == 1
    assert deliveries[0].body == deliveries[1].body  # one delivery: its id and body stay
    assert all(d.signed for d in deliveries)


async def test_a_receiver_answering_400_is_not_asked_again(
    hook_client: Client, hook_server: Server, receiver: Receiver
) -> None:
    alice, cid = await conversation(hook_client)
    receiver.answers["not for me"] = [(400, {})]  # then 200: a retry would be taken
    message = await hook_client.send(alice, cid, "not for me")
    await wait_until(lambda: receiver.of(message["id"]), 30, "the webhook's POST")
    [refused] = receiver.of(message["id"])
    delivery = refused.headers["Kibitz-Delivery"]
    await wait_until(lambda: logged(hook_server, "webhook_refused", delivery), 30, "the refusal logged")
    assert logged(hook_server, "webhook_refused", delivery)[0]["status"] == 400  # given up: no retry waits
    assert receiver.of(message["id"]) == [refused]
    log = hook_server.log()
    assert SECRET not in log and "not for me" not in log


# -- settings that stop start-up ---------------------------------------------------------------


def serve(tmp_path: Path, **settings: str) -> tuple[int, list[str]]:
    """``kibitz serve`` with only these settings: its exit status and the lines it printed
    itself (not the JSON log lines)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIBITZ_")}
    env.update(KIBITZ_PORT=str(free_port()), KIBITZ_DATA_DIR=str(tmp_path / "data"), KIBITZ_NOTIFY="webhook")
    done = subprocess.run([KIBITZ, "serve"], env={**env, **settings}, capture_output=True, timeout=60)
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    return done.returncode, [line for line in lines if not line.startswith("{")]


@pytest.mark.parametrize(
    ("settings", "variable"),
    [
        ({"KIBITZ_WEBHOOK_SECRET": SECRET}, "[webhook] url"),
        ({"KIBITZ_WEBHOOK_URL": "https://hooks.example.org/kibitz"}, "[webhook] secret"),
        (
            {"KIBITZ_WEBHOOK_URL": "https://hooks.example.org/k", "KIBITZ_WEBHOOK_SECRET": "tooshort"},
            "SECRET",
        ),
    ],
    ids=["no url", "no secret", "short secret"],
)
def test_missing_settings_stop_start_up_with_one_line(
    tmp_path: Path, settings: dict[str, str], variable: str
) -> None:
    status, lines = serve(tmp_path, **settings)
    assert status == 2 and len(lines) == 1, (status, lines)
    assert lines[0].startswith("kibitz: configuration error: ") and variable in lines[0], lines[0]
    assert "tooshort" not in lines[0]  # a secret is never repeated back
    assert not (tmp_path / "data" / "nats").exists(), "nothing may start before the settings are checked"


def test_a_private_url_stops_start_up_with_one_line(tmp_path: Path) -> None:
    status, lines = serve(
        tmp_path, KIBITZ_WEBHOOK_URL="https://127.0.0.1:9/hook", KIBITZ_WEBHOOK_SECRET=SECRET
    )
    assert status == 2 and len(lines) == 1, (status, lines)
    assert lines[0] == "kibitz: configuration error: KIBITZ_WEBHOOK_URL: its host must be on a public address"


# -- the notifier itself -----------------------------------------------------------------------------


def notifier(url: str, **values: Any) -> WebhookNotifier:
    return WebhookNotifier(PluginSettings("webhook", {"url": url, "secret": SECRET, **values}, {}))


def fake_app(insecure: bool = True, preview: bool = True) -> Any:
    """What the notifier uses of ``app``: two core settings and the sender's account."""

    async def get(user_id: int) -> User:
        return User(user_id, "alice", "Alice A.")

    settings = SimpleNamespace(push_allow_insecure=insecure, push_preview=preview)
    return SimpleNamespace(settings=settings, user=get)


MESSAGE = Message(7, 3, 1, "a message", "c-1", "2026-11-24T10:00:00.123Z")
CONVERSATION = Conversation(3, "direct", None, 1, (1, 2), "2026-11-24T09:00:00.000Z")


@pytest.mark.parametrize(
    ("table", "environ", "problem"),
    [
        ({"secret": SECRET}, {}, "[webhook] url: the webhook notifier needs the URL"),
        ({"url": "https://h.example.org/"}, {}, "[webhook] secret: is required"),
        ({"url": "https://h.example.org/", "secret": "x" * 15}, {}, "[webhook] secret: is 15 characters"),
        ({"url": "https://h.example.org/"}, {"KIBITZ_WEBHOOK_SECRET": "abc"}, "KIBITZ_WEBHOOK_SECRET: is 3"),
        (
            {"url": "https://h.example.org/", "secret": SECRET, "timeout": "soon"},
            {},
            "[webhook] timeout='soon'",
        ),
        ({"url": "https://h.example.org/", "secret": SECRET, "timeout": "0s"}, {}, "must be above 0"),
        ({"url": "https://h.example.org/", "secret": SECRET, "attempts": 0}, {}, "[webhook] attempts=0"),
    ],
)
def test_bad_settings_are_a_config_error_naming_their_source(
    table: dict[str, Any], environ: dict[str, str], problem: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(problem)):
        WebhookNotifier(PluginSettings("webhook", table, environ))


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://hooks.example.org/x", "must be an https:// URL"),
        ("https://localhost/x", "its host must be on a public address"),
        ("https://10.1.2.3/x", "its host must be on a public address"),
        ("https://[::1]/x", "its host must be on a public address"),
    ],
)
async def test_a_url_outside_the_guard_is_a_config_error_at_start(url: str, problem: str) -> None:
    hook = notifier(url)
    with pytest.raises(ConfigError, match=f"^\\[webhook\\] url: {problem}"):
        await hook.start(fake_app(insecure=False))
    await hook.close()


async def test_without_preview_the_body_is_left_out(own_receiver: Receiver) -> None:
    hook = notifier(own_receiver.url)
    await hook.start(fake_app(preview=False))
    try:
        assert await hook.reachable([2, 5, 9]) == {2, 5, 9}
        await hook.notify(MESSAGE, CONVERSATION, [2])  # returns once the first try is answered
    finally:
        await hook.close()
    [delivery] = own_receiver.of("7")
    assert delivery.signed and "body" not in delivery.json
    assert delivery.json["sender"] == {"id": "1", "display_name": "Alice A."}
    assert delivery.json["user_ids"] == ["2"] and delivery.json["conversation_id"] == "3"


async def test_close_drops_the_retries_still_waiting(
    own_receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="kibitz.webhook")
    hook = notifier(own_receiver.url)
    await hook.start(fake_app())
    own_receiver.answers["a message"] = [(503, {"Retry-After": "3600"})]
    try:
        await hook.notify(MESSAGE, CONVERSATION, [2])  # answered 503: a retry waits in the background
    finally:
        await hook.close()  # does not wait out the pause
    [delivery] = own_receiver.of("7")
    assert delivery.status == 503
    [dropped] = [r for r in caplog.records if r.getMessage() == "webhook_dropped"]
    assert dropped.__dict__["delivery"] == delivery.headers["Kibitz-Delivery"]
    assert dropped.__dict__["reason"] == "shutdown"


async def test_requests_in_flight_are_bounded(own_receiver: Receiver) -> None:
    own_receiver.gate = asyncio.Event()  # the receiver holds every request until it is set
    hook = notifier(own_receiver.url)
    await hook.start(fake_app())
    try:
        messages = [Message(100 + n, 3, 1, "many", f"m-{n}", "x") for n in range(3 * AT_ONCE)]
        sends = asyncio.gather(*(hook.notify(m, CONVERSATION, [2]) for m in messages))
        await wait_until(lambda: own_receiver.in_flight == AT_ONCE, 30, f"{AT_ONCE} requests held")
        own_receiver.gate.set()
        await sends
    finally:
        own_receiver.gate.set()
        await hook.close()
    assert own_receiver.most_in_flight == AT_ONCE
    assert len(own_receiver.deliveries) == 3 * AT_ONCE
