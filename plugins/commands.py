"""The ``commands`` extension: slash commands on the send path (``KIBITZ_PLUGINS=commands``).

A message whose body starts with ``/name`` runs the command ``name`` from ``app.commands``
(every plugin's ``register_commands``) before it is accepted; ``//text`` sends ``/text``
as it is. An unknown command is refused with a reason that names ``/help``, so a typo
never reaches the conversation. It brings three commands of its own:

- ``/me TEXT``: an action, sent as ``_Alice TEXT_``;
- ``/shrug [TEXT]``: ``TEXT ¯\\_(ツ)_/¯``;
- ``/help``: the installed commands, given back to the sender as the reason of a refusal
  (the protocol has no message for one device only), so nothing is sent.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable

from kibitz import App, Command, Draft, Message, Rejected, User, hookimpl

SHRUG = "¯\\_(ツ)_/¯"


@hookimpl
def register_commands(app: App) -> list[Command]:
    async def me(draft: Draft, arguments: str, sender: User) -> None:
        if not arguments:
            raise Rejected("/me needs what you do: /me waves")
        draft.body = f"_{sender.display_name} {arguments}_"

    async def shrug(draft: Draft, arguments: str, sender: User) -> None:
        draft.body = f"{arguments} {SHRUG}".strip()

    async def help_(draft: Draft, arguments: str, sender: User) -> None:
        listed = "; ".join(
            f"{c.usage}: {c.help}" for c in sorted(app.commands.values(), key=lambda c: c.name)
        )
        raise Rejected(f"Commands: {listed}")

    return [
        Command("me", "/me TEXT", "says what you do, in italics", me),
        Command("shrug", "/shrug [TEXT]", f"adds {SHRUG}", shrug),
        Command("help", "/help", "lists the commands", help_),
    ]


@hookimpl
def wrap_send(draft: Draft, sender: User, app: App) -> Callable[[], AsyncGenerator[None, Message]] | None:
    if not draft.body.startswith("/"):
        return None

    async def run() -> AsyncGenerator[None, Message]:
        if draft.body.startswith("//"):
            draft.body = draft.body[1:]
        else:
            name, _, arguments = draft.body[1:].partition(" ")
            command = app.commands.get(name.lower())
            if command is None:
                raise Rejected(f"/{name} is no command here; /help lists them, and //{name} sends it as text")
            await command.run(draft, arguments.strip(), sender)
        yield

    return run
