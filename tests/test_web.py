"""The web client in a real browser: Playwright driving Debian's Chromium against a real
server, used as people would, on a desktop-sized and a phone-sized window."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kibitz.testing import wait_until

from .kibitz_client import KIBITZ, PASSWORD, Client, Server, Socket, make_server

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--no-sandbox",  # as root, in a container without user namespaces
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",  # the machine has no internet: no calls home
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1200, "height": 800}
PHONE = {"width": 390, "height": 780}
XSS = "<img src=x onerror=alert(1)>"

playwright_api = pytest.importorskip("playwright.async_api", reason="Playwright for Python is not installed")
if not os.path.exists(CHROMIUM):
    pytest.skip(
        f"{CHROMIUM} is missing (make test installs Debian's chromium where it can)", allow_module_level=True
    )
expect = playwright_api.expect

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
async def web_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Server]:
    server = make_server(tmp_path_factory.mktemp("web") / "data")
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.stop)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield browser
        await browser.close()


class Person:
    """One person in a browser context of their own: signs up, opens chats, writes."""

    def __init__(self, page: Any, username: str, display_name: str) -> None:
        self.page, self.username, self.display_name = page, username, display_name
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("dialog", lambda dialog: self.errors.append(f"a dialog opened: {dialog.message}"))

    @classmethod
    async def sign_up(
        cls, browser: Any, server: Server, display_name: str, block_websockets: bool = False, **context: Any
    ) -> Person:
        browser_context = await browser.new_context(viewport=context.pop("viewport", DESKTOP), **context)
        if block_websockets:  # as a proxy that does not pass WebSocket upgrades would
            await browser_context.route_web_socket("**/api/v1/ws", lambda socket: socket.close())
        page = await browser_context.new_page()
        person = cls(page, "p" + uuid.uuid4().hex[:10], display_name)
        await page.goto(server.url)
        await page.get_by_role("tab", name="Sign up").click()
        await page.get_by_label("Username").fill(person.username)
        await page.get_by_label("Password (at least 8 characters)").fill(PASSWORD)
        await page.get_by_label("Your name, as others see it").fill(display_name)
        await page.get_by_role("button", name="Create account").click()
        await person.live("Live (polling)" if block_websockets else "Live")
        return person

    async def live(self, how: str = "Live") -> None:
        await expect(self.page.get_by_role("status")).to_have_text(how, timeout=20_000)

    async def start_chat(self, *others: Person, name: str = "") -> None:
        page = self.page
        await page.get_by_role("button", name="New conversation").click()
        for other in others:
            await page.get_by_label("Search people").fill(other.username)
            await page.get_by_role("button", name=f"@{other.username}").click()
        if name:
            await page.get_by_label("Group name").fill(name)
        await page.get_by_role("button", name="Create group" if name else "Start chat").click()
        await expect(page.get_by_label("Message", exact=True)).to_be_visible()

    async def open(self, title: str) -> None:
        await self.page.get_by_role("link", name=title).first.click()
        await expect(self.page.get_by_label("Message", exact=True)).to_be_visible()

    async def write(self, text: str) -> None:
        await self.page.get_by_label("Message", exact=True).fill(text)
        await self.page.keyboard.press("Enter")

    def messages(self, text: str = "") -> Any:
        return self.page.locator(".message", has_text=text) if text else self.page.locator(".message")

    async def sees(self, text: str, count: int = 1) -> None:
        await expect(self.messages(text)).to_have_count(count, timeout=20_000)


async def test_two_people_chat_live_and_what_they_write_stays_text(browser: Any, web_server: Server) -> None:
    alice = await Person.sign_up(browser, web_server, f"Alice {XSS}")
    bob = await Person.sign_up(browser, web_server, "Bob", viewport=PHONE, color_scheme="dark")
    await alice.start_chat(bob)
    await alice.write(f"hello {XSS} see https://example.com/a?b=c.")
    await alice.page.get_by_label("Message", exact=True).fill("two\nlines")
    await alice.page.get_by_role("button", name="Send").click()
    await bob.open(f"Alice {XSS}, 2 unread")
    await bob.sees("see https://example.com")
    await bob.sees("two")
    await bob.write("hi Alice")
    await alice.sees("hi Alice")
    bubble = bob.messages("see https://example.com").locator(".bubble")
    assert await bubble.locator("img").count() == 0  # the markup in the text is text
    assert XSS in await bubble.inner_text()
    link = bubble.get_by_role("link")
    assert await link.get_attribute("href") == "https://example.com/a?b=c"
    assert await link.get_attribute("rel") == "noopener noreferrer"
    assert await bob.page.locator(".bar h2").first.inner_text() == f"Alice {XSS}\nDirect messages"
    assert await bob.page.locator("img[src=x]").count() == 0
    assert alice.errors == [] and bob.errors == []


async def test_a_group_of_three(browser: Any, web_server: Server) -> None:
    alice = await Person.sign_up(browser, web_server, "Alice")
    bob = await Person.sign_up(browser, web_server, "Bob")
    carol = await Person.sign_up(browser, web_server, "Carol", viewport=PHONE)
    await alice.start_chat(bob, carol, name="Trio")
    await alice.write("welcome to the trio")
    for person in (bob, carol):
        await person.open("Trio, 1 unread")
        await person.sees("welcome to the trio")
    await bob.write("thanks")
    await carol.write("hello both")
    for person in (alice, bob, carol):
        await person.sees("thanks")
        await person.sees("hello both")
    header = alice.page.locator(".bar h2")
    await expect(header).to_contain_text("3 members")


async def test_a_reload_keeps_history_and_unread_counts(browser: Any, web_server: Server) -> None:
    alice = await Person.sign_up(browser, web_server, "Alice")
    bob = await Person.sign_up(browser, web_server, "Bob")
    await alice.start_chat(bob)
    for n in range(3):
        await alice.write(f"before the reload {n}")
    await expect(bob.page.get_by_role("link", name="Alice, 3 unread")).to_be_visible(timeout=20_000)
    await bob.page.reload()
    await bob.live()
    await expect(bob.page.get_by_role("link", name="Alice, 3 unread")).to_be_visible()
    await bob.open("Alice, 3 unread")
    await bob.sees("before the reload", 3)
    await expect(bob.page.get_by_role("link", name="Alice", exact=True)).to_be_visible()  # read now
    await alice.page.reload()
    await alice.live()
    await alice.open("Bob")
    await alice.sees("before the reload", 3)


async def test_a_tab_cut_off_catches_up_with_no_gap_and_no_duplicate(
    browser: Any, web_server: Server
) -> None:
    alice = await Person.sign_up(browser, web_server, "Alice")
    bob = await Person.sign_up(browser, web_server, "Bob")
    cut = {"off": False}
    sockets: list[Any] = []

    async def through(socket: Any) -> None:
        if cut["off"]:
            await socket.close()
        else:
            socket.connect_to_server()
            sockets.append(socket)

    await bob.page.route_web_socket("**/api/v1/ws", through)
    await bob.page.reload()
    await bob.live()
    await alice.start_chat(bob)
    await alice.write("before the cut")
    await bob.open("Alice, 1 unread")
    cut["off"] = True
    await bob.page.context.set_offline(True)
    for socket in sockets:
        await socket.close()
    await bob.live("Offline")
    for n in range(3):
        await alice.write(f"while bob is away {n}")
    await bob.write("written while cut off")
    await expect(bob.page.locator(".message.pending", has_text="written while cut off")).to_have_count(1)
    cut["off"] = False
    await bob.page.context.set_offline(False)
    await bob.live()
    for n in range(3):
        await bob.sees(f"while bob is away {n}", 1)
    await bob.sees("before the cut", 1)
    await expect(bob.page.locator(".message.pending")).to_have_count(0, timeout=20_000)  # sent once back
    await alice.sees("written while cut off", 1)
    await bob.write("back")
    await alice.sees("back")


async def test_with_websockets_blocked_it_long_polls(browser: Any, web_server: Server) -> None:
    alice = await Person.sign_up(browser, web_server, "Alice")
    bob = await Person.sign_up(browser, web_server, "Bob", block_websockets=True)
    await alice.start_chat(bob)
    await alice.write("can you hear me?")
    await bob.open("Alice, 1 unread")
    await bob.sees("can you hear me?")
    await bob.write("loud and clear, by long polling")
    await alice.sees("loud and clear")
    assert bob.errors == []


async def test_a_push_shows_a_notification_whose_click_opens_the_conversation(
    browser: Any, web_server: Server
) -> None:
    alice = await Person.sign_up(browser, web_server, "Alice")
    bob = await Person.sign_up(browser, web_server, "Bob")
    page, context = bob.page, bob.page.context
    await context.grant_permissions(["notifications"], origin=web_server.url)
    await alice.start_chat(bob)
    await alice.write("ping")
    await expect(page.get_by_role("link", name="Alice, 1 unread")).to_be_visible(timeout=20_000)
    conversation_id = await _conversation_of(web_server, bob, "Alice")
    cdp = await context.new_cdp_session(page)
    registrations: list[dict[str, Any]] = []
    cdp.on("ServiceWorker.workerRegistrationUpdated", lambda e: registrations.extend(e["registrations"]))
    await cdp.send("ServiceWorker.enable")
    await page.evaluate("navigator.serviceWorker.ready")
    await wait_until(lambda: bool(registrations), 10, "the service worker's registration")
    push = {
        "type": "message",
        "conversation_id": conversation_id,
        "message_id": "1",
        "sender": {"id": "1", "display_name": "Alice"},
        "body": "ping",
    }
    await cdp.send(
        "ServiceWorker.deliverPushMessage",
        {
            "origin": web_server.url,
            "registrationId": registrations[0]["registrationId"],
            "data": json.dumps(push),
        },
    )
    shown = """navigator.serviceWorker.ready
        .then((registration) => registration.getNotifications())
        .then((shown) => shown.map((n) => [n.title, n.body, n.tag]))"""

    async def notified() -> bool:
        return await page.evaluate(shown) == [["Alice", "ping", f"conversation-{conversation_id}"]]

    await wait_until(notified, 10, "the notification")
    (worker,) = context.service_workers
    await worker.evaluate(
        """(async () => {
            const [notification] = await self.registration.getNotifications()
            self.dispatchEvent(new NotificationEvent("notificationclick", { notification }))
        })()"""
    )
    await expect(page).to_have_url(f"{web_server.url}/#/c/{conversation_id}", timeout=10_000)
    await bob.sees("ping")


async def _conversation_of(server: Server, person: Person, title: str) -> str:
    href = await person.page.get_by_role("link", name=title).first.get_attribute("href")
    assert href and href.startswith("#/c/"), href
    return href.removeprefix("#/c/")


async def test_members_are_added_removed_and_leave(browser: Any, web_server: Server) -> None:
    alice = await Person.sign_up(browser, web_server, "Alice")
    bob = await Person.sign_up(browser, web_server, "Bob")
    carol = await Person.sign_up(browser, web_server, "Carol")
    await alice.start_chat(bob, name="Club")
    page = alice.page
    await page.get_by_role("button", name="Members").click()
    await page.get_by_label("Search people").fill(carol.username)
    await page.get_by_role("button", name=f"@{carol.username}").click()
    members = page.get_by_role("list", name="Members")
    await expect(members.get_by_role("listitem")).to_have_count(3)
    await expect(carol.page.get_by_role("link", name="Club")).to_be_visible(timeout=20_000)
    await members.get_by_role("button", name="Remove Bob").click()
    await expect(members.get_by_role("listitem")).to_have_count(2)
    await expect(bob.page.get_by_role("link", name="Club")).to_have_count(0, timeout=20_000)
    await page.get_by_role("button", name="Done").click()
    await carol.open("Club")
    await carol.page.get_by_role("button", name="Members").click()
    await expect(carol.page.get_by_role("button", name="Remove Alice")).to_have_count(0)  # not the creator
    await carol.page.get_by_role("button", name="Leave").click()
    await expect(carol.page.get_by_role("link", name="Club")).to_have_count(0, timeout=20_000)
    await expect(page.locator(".bar h2")).to_contain_text("1 member", timeout=20_000)


async def test_history_loads_as_you_scroll_up_and_typing_shows(browser: Any, web_server: Server) -> None:
    alice = await Person.sign_up(browser, web_server, "Alice")
    bob = await Person.sign_up(browser, web_server, "Bob")
    await alice.start_chat(bob)
    token = await alice.page.evaluate("JSON.parse(localStorage.getItem('kibitz.session')).token")
    cid = await _conversation_of(web_server, alice, "Bob")
    async with httpx.AsyncClient(
        base_url=web_server.api, headers={"Authorization": f"Bearer {token}"}
    ) as http:
        for n in range(120):
            body = {"body": f"old news {n:03d}", "client_msg_id": f"old-{n}"}
            assert (await http.post(f"/conversations/{cid}/messages", json=body)).status_code == 201
    await bob.open("Alice, 120 unread")
    await expect(bob.messages("old news 119")).to_be_visible()
    assert await bob.messages("old news").count() < 120  # the newest page only

    async def all_loaded() -> bool:
        await bob.page.locator(".messages").evaluate("list => { list.scrollTop = 0 }")
        return await bob.messages("old news").count() == 120

    await wait_until(all_loaded, 20, "the older pages to load")
    await expect(bob.page.locator(".older")).to_have_text("The start of the conversation")
    await alice.page.get_by_label("Message", exact=True).fill("I am typing")
    await expect(bob.page.locator(".typing")).to_have_text("Alice is typing…", timeout=10_000)
    await alice.page.keyboard.press("Enter")
    await bob.sees("I am typing")
    await expect(bob.page.locator(".typing")).to_have_text("")


async def test_an_administrator_makes_an_invitation_link_that_opens_sign_up_with_its_code(
    browser: Any, tmp_path_factory: pytest.TempPathFactory
) -> None:
    server = make_server(tmp_path_factory.mktemp("invite") / "data", KIBITZ_REGISTRATION="invite")
    await asyncio.to_thread(server.start)
    try:
        made = await asyncio.to_thread(
            subprocess.run,
            [KIBITZ, "user", "create", "boss", "--admin"],
            env=server.env,
            input=PASSWORD + "\n",
            capture_output=True,
            text=True,
        )
        assert made.returncode == 0, made.stderr
        admin = await (await browser.new_context(viewport=DESKTOP)).new_page()
        await admin.goto(server.url)
        await admin.get_by_label("Username").fill("boss")
        await admin.get_by_label("Password (at least 8 characters)").fill(PASSWORD)
        await admin.get_by_role("button", name="Log in").click()
        await admin.get_by_role("button", name="Invite").click()
        await admin.get_by_role("button", name="Make a link").click()
        link_field = admin.get_by_label("Invitation link")
        await expect(link_field).to_have_value(re.compile(r"#invite="))
        link = await link_field.input_value()
        await expect(admin.get_by_role("list", name="Open invitations")).to_contain_text("0 of 1 used")

        context = await browser.new_context(viewport=PHONE)
        person = Person(await context.new_page(), "p" + uuid.uuid4().hex[:10], "Invited")
        page = person.page
        await page.goto(link)
        code = page.get_by_label("Invitation code")
        await expect(code).to_have_value(link.rpartition("=")[2])
        assert "invite" not in page.url  # the code is taken out of the address bar
        await page.get_by_label("Username").fill(person.username)
        await page.get_by_label("Password (at least 8 characters)").fill(PASSWORD)
        await page.get_by_role("button", name="Create account").click()
        await person.live()
        assert await page.get_by_role("button", name="Invite").is_hidden()  # not an administrator

        await context.clear_cookies()
        await page.evaluate("localStorage.clear()")
        await page.goto(server.url)  # a used code, typed in by hand
        await page.get_by_role("tab", name="Sign up").click()
        await page.get_by_label("Username").fill("p" + uuid.uuid4().hex[:10])
        await page.get_by_label("Password (at least 8 characters)").fill(PASSWORD)
        await code.fill(link.rpartition("=")[2])
        await page.get_by_role("button", name="Create account").click()
        await expect(page.get_by_role("alert")).to_contain_text("invitation code does not work")
        assert person.errors == []
        await context.close()
    finally:
        await asyncio.to_thread(server.stop)


WEB = Path(__file__).resolve().parent.parent / "web"
FILES = sorted(p.relative_to(WEB).as_posix() for p in WEB.rglob("*") if p.suffix not in ("", ".py", ".pyc"))


async def test_the_page_is_strict_small_and_cached_for_a_second_load(web_server: Server) -> None:
    async with httpx.AsyncClient(base_url=web_server.url) as http:
        page = await http.get("/")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert page.headers["cache-control"] == "no-cache"
        (release,) = set(re.findall(r'"/web/([0-9a-f]+)/', page.text))
        compressed = 0
        for path in FILES:
            r = await http.get(f"/web/{release}/{path}", headers={"Accept-Encoding": "gzip"})
            assert r.status_code == 200, path
            assert r.headers["cache-control"] == "public, max-age=31536000, immutable", path
            assert r.headers["content-encoding"] == "gzip", path
            compressed += int(r.headers["content-length"])
        assert (await http.get("/web/not-this-release/app.js")).status_code == 404
    assert compressed < 150_000, f"the whole client is {compressed} bytes compressed"


def test_every_module_of_the_client_is_shipped() -> None:
    """What app.js imports, and what those import, is all in web/ (so in the wheel)."""
    seen: set[Path] = set()
    pending = [WEB / "app.js"]
    while pending:
        module = pending.pop()
        seen.add(module)
        for line in module.read_text().splitlines():
            if line.startswith("import ") and " from " in line:
                target = (module.parent / line.split(" from ")[1].strip(" \"';")).resolve()
                assert target.is_file(), f"{module.name} imports {target}, which is missing"
                if target not in seen:
                    pending.append(target)
    assert len(seen) > 10


async def test_the_client_opens_its_socket_on_the_instance_discovery_recommends(
    browser: Any, pair: tuple[Server, Server]
) -> None:
    """Page from one, which is busier: the WebSocket goes to two, and chat works there."""
    one, two = pair
    client = Client(one)
    try:
        busy = await client.user()
        sockets = [await Socket.open(one, busy) for _ in range(3)]
        before = await connections(two)
        alice = await Person.sign_up(browser, one, "Alice")
        bob = await Person.sign_up(browser, one, "Bob")
        assert await connections(two) == before + 2  # both sockets on two, where neither page came from
        await alice.start_chat(bob)
        await alice.write("hello from the quieter instance")
        await bob.open("Alice, 1 unread")
        await bob.sees("hello from the quieter instance")
        assert alice.errors == [] and bob.errors == []
        for socket in sockets:
            await socket.close()
    finally:
        await client.close()


async def connections(server: Server) -> int:
    """The WebSockets and long polls open on ``server``, as its own /discovery counts them."""
    async with httpx.AsyncClient() as http:
        found = (await http.get(server.api + "/discovery")).json()
    return next(s["connections"] for s in found["servers"] if s["url"] == server.url)
