"""Plugins: configuration errors stop start-up with one clear line, the example plugin over
real HTTP and WebSocket, extension hooks that raise are isolated, and ``kibitz plugins``.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from pathlib import Path
from typing import Any

import httpx
import pluggy
import pytest

from kibitz import Draft, Message, PluginSettings, Rejected, hookimpl
from kibitz.errors import ConfigError, Unavailable
from kibitz.metrics import Metrics
from kibitz.plugin_manager import Hooks, create_plugin_manager, fill_slot
from kibitz.plugins.memory import MemoryStorage
from kibitz.settings import load_settings
from kibitz.supervisor import free_port

from .kibitz_client import KIBITZ, POLL_INTERVAL, Client, Socket

REJECT_REASON = "the example plugin refuses messages that start with !reject"

# -- configuration errors -------------------------------------------------------------------

BAD_CONFIGURATION = [
    ("KIBITZ_STORAGE", "mongo"),
    ("KIBITZ_TRANSPORT", "nope"),
    ("KIBITZ_IDS", "dice"),
    ("KIBITZ_NOTIFY", "pigeon"),
    ("KIBITZ_PLUGINS", "nosuch"),
    ("KIBITZ_PLUGINS", "example,nosuch"),
    ("KIBITZ_PORT", "abc"),
    ("KIBITZ_PORT", "70000"),
    ("KIBITZ_REGISTRATION", "maybe"),
    ("KIBITZ_RATE_LIMITS", "sometimes"),
    ("KIBITZ_NATS_RETENTION_AGE", "soon"),
    ("KIBITZ_REDIS_URL", "http://x"),
]

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


def clean_environ(tmp_path: Path) -> dict[str, str]:
    """This process's environment without any KIBITZ_ setting, plus a data folder and a port."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIBITZ_")}
    env.update(KIBITZ_HOST="127.0.0.1", KIBITZ_PORT=str(free_port()), KIBITZ_DATA_DIR=str(tmp_path / "data"))
    return env


@pytest.mark.parametrize(("variable", "value"), BAD_CONFIGURATION, ids=lambda v: str(v))
def test_configuration_error_stops_start_up_with_one_line(tmp_path: Path, variable: str, value: str) -> None:
    env = {**clean_environ(tmp_path), variable: value}
    done = subprocess.run([KIBITZ, "serve"], env=env, capture_output=True, timeout=30)
    assert done.returncode == 2, (done.returncode, done.stderr.decode(errors="replace")[-2000:])
    lines = done.stderr.decode(errors="replace").strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n" + "\n".join(lines)
    assert variable in lines[0], lines[0]
    assert not (tmp_path / "data" / "nats").exists(), "nothing may start before the configuration is checked"


# -- kibitz plugins -------------------------------------------------------------------------


def plugin_lines(env: dict[str, str]) -> dict[str, str]:
    """``kibitz plugins``: each installed plugin's line, by name."""
    done = subprocess.run([KIBITZ, "plugins"], env=env, capture_output=True, timeout=30, text=True)
    assert done.returncode == 0, done.stderr
    found = {}
    for line in done.stdout.splitlines():
        for name in ("nats", "redis", "snowflake", "log", "example"):
            if name in line.replace("*", " ").split():
                found[name] = line
    return found


def is_marked(line: str) -> bool:
    return line.lstrip().startswith("*")


def test_kibitz_plugins_lists_every_installed_plugin_and_marks_the_active(tmp_path: Path) -> None:
    env = clean_environ(tmp_path)
    lines = plugin_lines(env)
    assert set(lines) == {"nats", "redis", "snowflake", "log", "example"}, lines
    # with the defaults: the three slots are active, the example extension is not
    for name in ("nats", "redis", "snowflake"):
        assert is_marked(lines[name]), lines[name]
        assert "kibitz 0.1.0" in lines[name], lines[name]  # the package that ships it, and its version
    assert not is_marked(lines["example"]), lines["example"]
    assert "kibitz-example" in lines["example"].replace("_", "-"), lines["example"]
    marked = plugin_lines({**env, "KIBITZ_PLUGINS": "example"})
    assert is_marked(marked["example"]), marked["example"]
    for name in ("nats", "redis", "snowflake"):
        assert is_marked(marked[name]), marked[name]


# -- the example plugin on the session server ----------------------------------------------


async def accepted_count(client: Client) -> int:
    r = await client.http.get("/-/example/accepted")
    assert r.status_code == 200, r.text
    count: int = r.json()["accepted"]
    return count


async def test_rejected_message_is_403_and_nothing_is_stored(client: Client) -> None:
    alice, bob = await client.user(), await client.user()
    cid = await client.direct(alice, bob)
    await client.send(alice, cid, "before")
    history = await client.history(bob, cid)
    r = await client.http.post(
        f"/conversations/{cid}/messages",
        json={"body": "!reject this please", "client_msg_id": "r1"},
        headers=alice.headers,
    )
    assert r.status_code == 403, r.text
    assert r.json() == {"error": {"code": "forbidden", "message": REJECT_REASON}}
    assert await client.history(bob, cid) == history
    assert await client.history(alice, cid) == history
    # a request that fails changes nothing: the client_msg_id is still free
    fine = await client.send(alice, cid, "after", client_msg_id="r1")
    assert fine["body"] == "after"
    assert [m["body"] for m in (await client.history(bob, cid))["messages"]] == ["before", "after"]


async def test_rejected_message_over_websocket_is_an_error_frame(client: Client) -> None:
    alice, bob = await client.user(), await client.user()
    cid = await client.direct(alice, bob)
    socket = await Socket.open(client.server, alice)
    await socket.send_json(
        {"type": "send", "conversation_id": cid, "body": "!reject over ws", "client_msg_id": "w1"}
    )
    frame = await socket.until(lambda f: f["type"] in ("error", "sent"))
    assert frame["type"] == "error", frame
    assert frame["code"] == "forbidden" and frame["client_msg_id"] == "w1", frame
    assert frame["message"] == REJECT_REASON
    # the connection stays open and the next send goes through
    await socket.send_json({"type": "send", "conversation_id": cid, "body": "ok", "client_msg_id": "w2"})
    sent = await socket.until(lambda f: f["type"] == "sent")
    assert sent["message"]["body"] == "ok"
    await socket.close()
    assert [m["body"] for m in (await client.history(bob, cid))["messages"]] == ["ok"]


async def test_shout_is_stored_upper_cased(client: Client) -> None:
    alice, bob = await client.user(), await client.user()
    cid = await client.direct(alice, bob)
    socket = await Socket.open(client.server, bob)
    sent = await client.send(alice, cid, "!shout hello")
    assert sent["body"] == "HELLO"
    (live,) = await socket.messages(1)
    assert live == sent
    await socket.close()
    assert (await client.history(bob, cid))["messages"] == [sent]


async def test_accepted_route_counts_accepted_messages(client: Client) -> None:
    alice, bob = await client.user(), await client.user()
    cid = await client.direct(alice, bob)
    before = await accepted_count(client)
    await client.send(alice, cid, "one")
    await client.send(bob, cid, "two")
    deadline = time.monotonic() + 10
    while (now := await accepted_count(client)) < before + 2:
        assert time.monotonic() < deadline, f"accepted stayed at {now}, expected at least {before + 2}"
        await asyncio.sleep(POLL_INTERVAL)


# -- extension hooks that raise are isolated (in process) ------------------------------------


def plugin_manager(*plugins: object) -> pluggy.PluginManager:
    return create_plugin_manager(load_settings(environ={}), extra=list(plugins))


def hooks(pm: pluggy.PluginManager, fail_closed: bool = False, budget: float = 5.0) -> Hooks:
    return Hooks(pm, Metrics(), budget, fail_closed)


def draft(body: str = "hello") -> Draft:
    return Draft(1, 2, body, uuid.uuid4().hex)


def message(body: str = "hello") -> Message:
    return Message(
        id=123,
        conversation_id=1,
        sender_id=2,
        body=body,
        client_msg_id="c",
        created_at="2026-01-01T00:00:00.000Z",
    )


class Recorder:
    """Notes what the well-behaved plugins saw."""

    def __init__(self) -> None:
        self.seen: list[Any] = []


def wrapper_plugin(recorder: Recorder, tag: str) -> object:
    class Plugin:
        @hookimpl
        def wrap_send(self, draft: Draft) -> Callable[[], AsyncGenerator[None, Message]]:
            async def wrapper() -> AsyncGenerator[None, Message]:
                recorder.seen.append((tag, "before", draft.body))
                accepted = yield
                recorder.seen.append((tag, "after", accepted.body))

            return wrapper

        @hookimpl
        async def message_accepted(self, message: Message) -> None:
            recorder.seen.append((tag, "accepted", message.body))

    return Plugin()


async def test_call_each_isolates_a_raising_hook() -> None:
    recorder = Recorder()

    class SyncBroken:
        @hookimpl
        def message_accepted(self, message: Message) -> None:
            raise RuntimeError("sync boom")

    class AsyncBroken:
        @hookimpl
        async def message_accepted(self, message: Message) -> None:
            raise ValueError("async boom")

    pm = plugin_manager(SyncBroken(), wrapper_plugin(recorder, "good"), AsyncBroken())
    await hooks(pm).call_each("message_accepted", message=message("m"), conversation=None, app=None)
    assert recorder.seen == [("good", "accepted", "m")]
    # and in the other order too
    recorder.seen.clear()
    pm = plugin_manager(AsyncBroken(), SyncBroken(), wrapper_plugin(recorder, "good"))
    await hooks(pm).call_each("message_accepted", message=message("n"), conversation=None, app=None)
    assert recorder.seen == [("good", "accepted", "n")]


def broken_wrappers() -> list[object]:
    """wrap_send implementations that fail in every way but a deliberate Rejected."""

    class FactoryRaises:
        @hookimpl
        def wrap_send(self, draft: Draft) -> Any:
            raise RuntimeError("factory boom")

    class RaisesBeforeYield:
        @hookimpl
        def wrap_send(self, draft: Draft) -> Any:
            async def wrapper() -> AsyncGenerator[None, Message]:
                raise RuntimeError("before boom")
                yield

            return wrapper

    class NeverYields:
        @hookimpl
        def wrap_send(self, draft: Draft) -> Any:
            async def wrapper() -> AsyncGenerator[None, Message]:
                if False:
                    yield

            return wrapper

    class NotAGenerator:
        @hookimpl
        def wrap_send(self, draft: Draft) -> Any:
            return lambda: 42

    class RaisesAfterYield:
        @hookimpl
        def wrap_send(self, draft: Draft) -> Any:
            async def wrapper() -> AsyncGenerator[None, Message]:
                yield
                raise RuntimeError("after boom")

            return wrapper

    return [
        FactoryRaises(),
        RaisesBeforeYield(),
        NeverYields(),
        NotAGenerator(),
        RaisesAfterYield(),
    ]


@pytest.mark.parametrize("position", ["first", "last"])
async def test_send_wrappers_isolate_a_raising_wrapper(position: str) -> None:
    recorder = Recorder()
    good = [wrapper_plugin(recorder, "a"), wrapper_plugin(recorder, "b")]
    broken = broken_wrappers()
    plugins = [*broken, *good] if position == "first" else [*good, *broken]
    pm = plugin_manager(*plugins)
    wrappers = hooks(pm).send_wrappers()
    d = draft("hi")
    await wrappers.before(draft=d, sender=None, conversation=None, app=None)
    await wrappers.after(message(d.body))
    assert sorted(recorder.seen) == sorted(
        [("a", "before", "hi"), ("b", "before", "hi"), ("a", "after", "hi"), ("b", "after", "hi")]
    )
    await hooks(pm).call_each("message_accepted", message=message(d.body), conversation=None, app=None)
    assert ("a", "accepted", "hi") in recorder.seen and ("b", "accepted", "hi") in recorder.seen


async def test_a_deliberate_rejection_still_rejects_and_closes_entered_wrappers() -> None:
    closed: list[str] = []

    class Entered:
        @hookimpl
        def wrap_send(self, draft: Draft) -> Any:
            async def wrapper() -> AsyncGenerator[None, Message]:
                try:
                    yield
                finally:
                    closed.append("entered")

            return wrapper

    class Refuses:
        @hookimpl
        def wrap_send(self, draft: Draft) -> Any:
            async def wrapper() -> AsyncGenerator[None, Message]:
                raise Rejected("no thanks")
                yield

            return wrapper

    pm = plugin_manager(Entered(), *broken_wrappers(), Refuses())
    wrappers = hooks(pm).send_wrappers()
    with pytest.raises(Rejected) as refused:
        await wrappers.before(draft=draft(), sender=None, conversation=None, app=None)
    assert refused.value.reason == "no thanks"
    assert closed == ["entered"]


async def test_a_wrapper_failing_to_close_after_acceptance_is_isolated() -> None:
    """Once a message is accepted, a wrapper whose clean-up raises must not stop the others
    from seeing it (nor, in the server, ``message_accepted`` and the notifiers after them)."""
    recorder = Recorder()

    class YieldsTwiceAndFailsToClose:
        @hookimpl
        def wrap_send(self, draft: Draft) -> Any:
            async def wrapper() -> AsyncGenerator[None, Message]:
                try:
                    yield
                    yield
                finally:
                    raise RuntimeError("close boom")

            return wrapper

    for plugins in (
        [YieldsTwiceAndFailsToClose(), wrapper_plugin(recorder, "good")],
        [wrapper_plugin(recorder, "good"), YieldsTwiceAndFailsToClose()],
    ):
        recorder.seen.clear()
        wrappers = hooks(plugin_manager(*plugins)).send_wrappers()
        d = draft("hi")
        await wrappers.before(draft=d, sender=None, conversation=None, app=None)
        await wrappers.after(message(d.body))
        assert recorder.seen == [("good", "before", "hi"), ("good", "after", "hi")]


async def test_a_wrapper_failing_to_close_does_not_turn_a_rejection_into_a_crash() -> None:
    """A broken wrapper's clean-up must not replace a deliberate Rejected (the sender's 403)."""

    class CloseBoom:
        @hookimpl
        def wrap_send(self, draft: Draft) -> Any:
            async def wrapper() -> AsyncGenerator[None, Message]:
                try:
                    yield
                finally:
                    raise RuntimeError("close boom")

            return wrapper

    class Refuses:
        @hookimpl
        def wrap_send(self, draft: Draft) -> Any:
            async def wrapper() -> AsyncGenerator[None, Message]:
                raise Rejected("no thanks")
                yield

            return wrapper

    pm = plugin_manager(CloseBoom(), Refuses())
    wrappers = hooks(pm).send_wrappers()
    with pytest.raises(Rejected):
        await wrappers.before(draft=draft(), sender=None, conversation=None, app=None)


async def test_wrappers_may_change_the_draft_in_order() -> None:
    class Append:
        def __init__(self, suffix: str) -> None:
            self.suffix = suffix

        @hookimpl
        def wrap_send(self, draft: Draft) -> Any:
            async def wrapper() -> AsyncGenerator[None, Message]:
                draft.body += self.suffix
                yield

            return wrapper

    pm = plugin_manager(Append("1"), *broken_wrappers(), Append("2"))
    d = draft("x")
    wrappers = hooks(pm).send_wrappers()
    await wrappers.before(draft=d, sender=None, conversation=None, app=None)
    await wrappers.after(message(d.body))
    assert d.body == "x12"


def failures(hooks: Hooks) -> dict[tuple[str, str, str], float]:
    """``kibitz_plugin_failures_total`` by (plugin, hook, reason), as /metrics shows it."""
    counted = {}
    for metric in hooks.metrics.plugin_failures.collect():
        for sample in metric.samples:
            if sample.name.endswith("_total"):
                labels = sample.labels
                counted[labels["plugin"], labels["hook"], labels["reason"]] = sample.value
    return counted


class Hangs:
    """Every hook of it waits for something that never happens."""

    @hookimpl
    def wrap_send(self, draft: Draft) -> Any:
        async def wrapper() -> AsyncGenerator[None, Message]:
            await asyncio.Event().wait()
            yield

        return wrapper

    @hookimpl
    async def message_accepted(self, message: Message) -> None:
        await asyncio.Event().wait()


async def test_a_hook_over_its_budget_is_skipped_logged_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    recorder = Recorder()
    pm = plugin_manager(Hangs(), wrapper_plugin(recorder, "good"))
    calls = hooks(pm, budget=0.05)
    wrappers = calls.send_wrappers()
    d = draft("hi")
    await wrappers.before(draft=d, sender=None, conversation=None, app=None)
    await wrappers.after(message(d.body))
    await calls.call_each("message_accepted", message=message(d.body), conversation=None, app=None)
    assert recorder.seen == [("good", "before", "hi"), ("good", "after", "hi"), ("good", "accepted", "hi")]
    (hangs,) = [pm.get_name(p) for p in pm.get_plugins() if isinstance(p, Hangs)]
    assert failures(calls) == {(hangs, "wrap_send", "timeout"): 1, (hangs, "message_accepted", "timeout"): 1}
    logged = [r for r in caplog.records if r.getMessage() == "hook_failed"]
    assert {(r.plugin, r.hook, r.reason) for r in logged} == {  # type: ignore[attr-defined]
        (hangs, "wrap_send", "timeout"),
        (hangs, "message_accepted", "timeout"),
    }


@pytest.mark.parametrize("broken", [0, 1, 2, 3], ids=["factory", "before", "never-yields", "not-a-generator"])
async def test_fail_closed_refuses_a_message_whose_check_fails(broken: int) -> None:
    recorder = Recorder()
    pm = plugin_manager(wrapper_plugin(recorder, "entered"), broken_wrappers()[broken])
    with pytest.raises(Unavailable, match="could not check the message"):
        await (
            hooks(pm, fail_closed=True)
            .send_wrappers()
            .before(draft=draft(), sender=None, conversation=None, app=None)
        )
    # fail-open (the default) lets it through the working check
    await hooks(pm).send_wrappers().before(draft=draft("x"), sender=None, conversation=None, app=None)
    assert ("entered", "before", "x") in recorder.seen


async def test_a_raising_hook_is_counted_by_plugin_and_hook() -> None:
    class Broken:
        @hookimpl
        def message_accepted(self, message: Message) -> None:
            raise RuntimeError("boom")

    pm = plugin_manager(Broken())
    calls = hooks(pm)
    for _ in range(3):
        await calls.call_each("message_accepted", message=message(), conversation=None, app=None)
    (name,) = [pm.get_name(p) for p in pm.get_plugins() if isinstance(p, Broken)]
    assert failures(calls) == {(name, "message_accepted", "error"): 3}


async def test_example_route_answers_without_a_token(client: Client) -> None:
    async with httpx.AsyncClient(base_url=client.server.url, timeout=10) as http:
        r = await http.get("/api/v1/-/example/accepted")
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["accepted"], int)


async def test_the_example_plugin_sees_startup_and_connections(client: Client) -> None:
    """``startup``, ``connection_opened`` and ``connection_closed`` reach an installed plugin."""

    async def counts() -> dict[str, int]:
        r = await client.http.get("/-/example/counts")
        assert r.status_code == 200, r.text
        found: dict[str, int] = r.json()
        return found

    before = await counts()
    assert before["started"] == 1
    alice = await client.user()
    socket = await Socket.open(client.server, alice)
    deadline = asyncio.get_running_loop().time() + 10
    while (await counts())["opened"] < before["opened"] + 1:
        assert asyncio.get_running_loop().time() < deadline, "connection_opened never ran"
        await asyncio.sleep(POLL_INTERVAL)
    await socket.close()
    while (await counts())["closed"] < before["closed"] + 1:
        assert asyncio.get_running_loop().time() < deadline, "connection_closed never ran"
        await asyncio.sleep(POLL_INTERVAL)


def test_a_slot_plugin_lacking_a_method_of_its_slot_is_refused_before_it_starts() -> None:
    """A storage written for plugin API 0.2 has no claim_sent: one line at start-up, not a 500 later."""
    old = type("OldStorage", (), {k: v for k, v in vars(MemoryStorage).items() if "_sent" not in k})

    class Provides:
        @hookimpl
        def register_storage(self, name: str, settings: PluginSettings) -> object | None:
            return old() if name == "old" else None

    settings = load_settings(environ={"KIBITZ_STORAGE": "old"})
    refused = (
        "KIBITZ_STORAGE='old': the plugin lacks find_sent, claim_sent, release_sent of kibitz.slots.Storage"
    )
    with pytest.raises(ConfigError, match=re.escape(refused)):
        fill_slot(plugin_manager(Provides()), "storage", "old", settings)
