"""Take the web client's screenshots in docs/screenshots/: ``python docs/screenshots.py``.

Starts a throw-away ``kibitz serve``, fills it with a few people and conversations
through the API, and photographs the client in Debian's Chromium: desktop and phone,
light and dark. Needs the test tools (``make test`` installs them).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from playwright.async_api import async_playwright

from kibitz.supervisor import free_port

OUT = Path(__file__).with_name("screenshots")
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]
PASSWORD = "correct horse battery"
SIZES = {"desktop": {"width": 1280, "height": 800}, "phone": {"width": 390, "height": 800}}


def chat(api: httpx.Client) -> dict[str, dict[str, str]]:
    """People and conversations to look at; the session of the one whose screen is shown."""
    people = {}
    for username, name in [
        ("maya", "Maya Lindqvist"),
        ("tom", "Tom Okafor"),
        ("ines", "Inês Duarte"),
        ("sam", "Sam Chen"),
    ]:
        api.post("/accounts", json={"username": username, "password": PASSWORD, "display_name": name})
        people[username] = api.post("/sessions", json={"username": username, "password": PASSWORD}).json()

    def auth(who: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {people[who]['token']}"}

    def send(who: str, cid: str, body: str) -> None:
        api.post(
            f"/conversations/{cid}/messages",
            json={"body": body, "client_msg_id": os.urandom(8).hex()},
            headers=auth(who),
        )

    members = [people[p]["user"]["id"] for p in ("tom", "ines", "sam")]
    hike = api.post(
        "/conversations",
        json={"type": "group", "name": "Weekend hike", "members": members},
        headers=auth("maya"),
    ).json()
    cid = hike["conversation"]["id"]
    for who, body in [
        ("tom", "Forecast says sun on Saturday ☀️"),
        ("ines", "Then let's do the ridge trail. Start at 8?"),
        ("maya", "8 works. I'll bring the map and snacks."),
        ("sam", "Count me in! Route: https://example.org/trails/ridge"),
        ("tom", "Carpool from the station at 7:30?"),
        ("maya", "Perfect, see you there"),
        ("ines", "Don't forget water, it gets hot up there"),
    ]:
        send(who, cid, body)
    direct = api.post(
        "/conversations",
        json={"type": "direct", "members": [people["tom"]["user"]["id"]]},
        headers=auth("ines"),
    ).json()
    send("tom", direct["conversation"]["id"], "Did you get the tickets?")
    send("ines", direct["conversation"]["id"], "Yes! Two for Friday.")
    book = api.post(
        "/conversations",
        json={"type": "direct", "members": [people["sam"]["user"]["id"]]},
        headers=auth("maya"),
    ).json()
    send("sam", book["conversation"]["id"], "Finished the book you lent me. Loved it.")
    send("sam", book["conversation"]["id"], "Coffee next week?")
    return {"session": people["maya"], "open": {"id": cid}}


async def photograph(url: str, seeded: dict[str, dict[str, str]]) -> None:
    OUT.mkdir(exist_ok=True)
    session = json.dumps({k: seeded["session"][k] for k in ("token", "user", "device")})
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        for size, viewport in SIZES.items():
            for scheme in ("light", "dark"):
                context = await browser.new_context(
                    viewport=viewport, color_scheme=scheme, device_scale_factor=1
                )
                await context.add_init_script(
                    f"localStorage.setItem('kibitz.session', {json.dumps(session)})"
                )
                page = await context.new_page()
                await page.goto(f"{url}/#/c/{seeded['open']['id']}")
                await page.locator(".status.live").wait_for(state="attached")
                await page.locator(".message").last.wait_for()
                await page.screenshot(path=OUT / f"{size}-{scheme}.png")
                if size == "phone":
                    await page.goto(f"{url}/#/")
                    await page.locator(".conversation").first.wait_for()
                    await page.screenshot(path=OUT / f"{size}-{scheme}-list.png")
                await context.close()
        await browser.close()


def main() -> int:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "KIBITZ_PORT": str(port), "KIBITZ_DATA_DIR": folder, "KIBITZ_RATE_LIMITS": "off"}
        server = subprocess.Popen(
            [sys.executable, "-m", "kibitz", "serve"], env=env, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 30
            while not _up(url):
                if time.monotonic() > deadline:
                    raise SystemExit("kibitz did not get ready within 30 s")
                time.sleep(0.2)
            with httpx.Client(base_url=f"{url}/api/v1") as api:
                seeded = chat(api)
            asyncio.run(photograph(url, seeded))
        finally:
            server.terminate()
            server.wait(30)
    print(f"wrote {OUT}/*.png", file=sys.stderr)
    return 0


def _up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())
