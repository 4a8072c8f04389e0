"""The operator's commands: ``kibitz user``, ``invite``, ``backup``, ``restore``, ``export``
and ``migrate``.

A user, invitation, backup or export command asks the server running on this data folder (``admin.sock``,
see ``kibitz.admin``), so that what it changes takes effect at once, open connections
included. With no server running it starts the services itself for the length of the
command, holding the data folder's lock as ``kibitz serve`` would.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from pathlib import Path
from typing import Any

import orjson

from .admin import AdminError, ask
from .backup import BackupError, restore
from .database import SchemaTooNew, create_engine, migrate
from .datadir import DataFolderError, lock_data_folder
from .doctor import doctor, show
from .errors import ConfigError
from .progress import Progress, ProgressDisplay
from .settings import Settings, parse_duration


def add_commands(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], config: argparse.ArgumentParser
) -> None:
    """Add ``user``, ``invite`` and ``migrate`` to the ``kibitz`` command's sub-commands."""
    user = commands.add_parser("user", parents=[config], help="create, list, disable, enable or delete users")
    actions = user.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser(
        "create",
        help="make an account (whatever KIBITZ_REGISTRATION says)",
        description="The password is asked twice on a terminal, else read as one line of standard input "
        "(a bot has none).",
    )
    create.add_argument("username")
    create.add_argument("--display-name", help="the name others see (default: the username)")
    role = create.add_mutually_exclusive_group()
    role.add_argument("--admin", action="store_true", help="make an administrator (the first one, say)")
    role.add_argument(
        "--bot",
        action="store_true",
        help="make a bot: no password, so nobody logs in as it; plugins post as it",
    )
    listing = actions.add_parser("list", help="every user, with state and logged-in devices")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    for name, text in (
        ("disable", "stop a user logging in; logs out every device and closes its connections at once"),
        ("enable", "let a disabled user log in again"),
        ("reset-password", "set a new password (asked as for create); logs out every device"),
        ("delete", "delete an account with its devices, subscriptions and group memberships"),
    ):
        action = actions.add_parser(name, help=text, description=text)
        action.add_argument("username")
        if name == "delete":
            action.add_argument("--yes", action="store_true", help="do not ask to confirm")

    invite = commands.add_parser(
        "invite", parents=[config], help="invitations for KIBITZ_REGISTRATION=invite"
    )
    actions = invite.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="a new invitation code and link (shown once)")
    create.add_argument("--uses", type=int, default=1, help="how many people may sign up with it (default 1)")
    create.add_argument("--expires", metavar="DURATION", help="e.g. 7d, 12h (default: never)")
    listing = actions.add_parser("list", help="every invitation and its state")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    revoke = actions.add_parser("revoke", help="stop an invitation working")
    revoke.add_argument("id")

    backup = commands.add_parser(
        "backup",
        parents=[config],
        help="write a consistent backup of the whole appliance to FILE (while it runs, or not)",
    )
    backup.add_argument("file", metavar="FILE", help="a new file (.tar.gz)")
    restore = commands.add_parser(
        "restore",
        parents=[config],
        help="restore a backup into an empty data folder (and empty services)",
    )
    restore.add_argument("file", metavar="FILE")
    export = commands.add_parser(
        "export", parents=[config], help="write a conversation's or a user's history as JSON lines"
    )
    which = export.add_mutually_exclusive_group(required=True)
    which.add_argument("--conversation", metavar="ID", help="one conversation, by id")
    which.add_argument("--user", metavar="USERNAME", help="every conversation the user is in")
    export.add_argument("file", metavar="FILE", help="a new file")

    commands.add_parser(
        "doctor",
        parents=[config],
        help="check the configuration, data folder, disk, database and every backing service",
    )
    commands.add_parser(
        "migrate",
        parents=[config],
        help="bring the database schema up to date (kibitz serve also does at start)",
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Carry out a ``user``, ``invite`` or ``migrate`` command; the process's exit status."""
    progress = ProgressDisplay(args.command)
    try:
        if args.command == "migrate":
            return asyncio.run(_migrate(settings))
        if args.command == "doctor":
            return show(asyncio.run(doctor(settings)))
        if args.command == "restore":
            result = asyncio.run(restore(settings, Path(args.file).absolute(), progress))
        else:
            action, call_args = _request(args)
            result = asyncio.run(_perform(settings, action, call_args, progress))
    except (AdminError, BackupError, DataFolderError, SchemaTooNew) as e:
        progress.close()
        print(f"kibitz: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    progress.close()
    _show(args, result)
    return 0


def _request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    """The ``Admin`` action and its arguments that the command line asks for."""
    if args.command == "backup":
        return "backup", {"file": str(Path(args.file).absolute())}
    if args.command == "export":
        which = {"conversation_id": args.conversation} if args.conversation else {"username": args.user}
        return "export", {"file": str(Path(args.file).absolute()), **which}
    if args.command == "invite":
        if args.action == "create":
            expires = parse_duration("--expires", args.expires) if args.expires else None
            return "invite_create", {"uses": args.uses, "expires_in": expires}
        if args.action == "revoke":
            return "invite_revoke", {"invitation_id": args.id}
        return "invite_list", {}
    if args.action == "create":
        who = {"bot": True} if args.bot else {"password": _new_password(), "admin": args.admin}
        return "user_create", {"username": args.username, "display_name": args.display_name, **who}
    if args.action == "reset-password":
        return "user_reset_password", {"username": args.username, "password": _new_password()}
    if args.action == "delete" and not args.yes:
        _confirm(f"Delete {args.username} with their devices and group memberships? This cannot be undone.")
    if args.action == "list":
        return "user_list", {}
    return f"user_{args.action}", {"username": args.username}


def _new_password() -> str:
    if not sys.stdin.isatty():
        return sys.stdin.readline().rstrip("\n")
    password = getpass.getpass("New password: ")
    if getpass.getpass("The same again: ") != password:
        raise AdminError("the two passwords differ; nothing was changed")
    return password


def _confirm(question: str) -> None:
    if not sys.stdin.isatty():
        raise AdminError("refusing to delete without --yes when there is no terminal to ask")
    if input(f"{question} [y/N] ").strip().lower() not in ("y", "yes"):
        raise AdminError("nothing was changed")


async def _perform(settings: Settings, action: str, args: dict[str, Any], progress: Progress) -> Any:
    """Ask the running server; with none, start the services here for this one action."""
    from .app import Kibitz, StartupError

    try:
        return await ask(settings.data_dir.absolute(), action, args, progress)
    except (FileNotFoundError, ConnectionRefusedError):
        pass  # no server on this data folder
    lock = lock_data_folder(settings.data_dir)
    try:
        app = Kibitz(settings)
        try:
            await app.start()
        except StartupError as e:
            raise AdminError(f"could not start: {e}") from None
        try:
            return await app.admin.call(action, args, progress)
        finally:
            await app.drain()
            await app.stop()
    finally:
        lock.close()


async def _migrate(settings: Settings) -> int:
    engine = create_engine(settings.sqlalchemy_url)
    try:
        before, after = await migrate(engine)
    except OSError as e:
        raise ConfigError(f"the database cannot be reached: {e}") from None
    finally:
        await engine.dispose()
    print(f"schema {before} -> {after}" if before != after else f"the schema is up to date ({after})")
    return 0


def _show(args: argparse.Namespace, result: Any) -> None:
    if args.command in ("backup", "restore", "export"):
        numbers = (result.get("records") or result).items()
        counts = ", ".join(f"{v} {k}" for k, v in numbers if isinstance(v, int) and k != "bytes")
        print(f"{args.command.capitalize()} done: {result.get('file', result.get('folder'))} ({counts}).")
    elif getattr(args, "json", False):
        for row in result:
            print(orjson.dumps(row).decode())
    elif args.action == "list" and args.command == "user":
        _table(result, ("username", "display_name", "state", "admin", "bot", "devices", "created_at", "id"))
    elif args.action == "list":
        _table(result, ("id", "state", "uses", "uses_allowed", "expires_at", "created_at"))
    elif args.command == "invite" and args.action == "create":
        print(f"Invitation {result['invitation']['id']}: code {result['code']}")
        print(f"Link to sign up: {result['link']}")
        print("The code is shown this once.")
    elif args.command == "user" and args.action == "create":
        role = "administrator" if result["admin"] else "bot" if result["bot"] else "user"
        print(f"Made {role} {result['username']} (id {result['id']}).")
    elif args.command == "invite":
        print(f"Revoked invitation {args.id}.")
    else:
        done = {
            "disable": "Disabled",
            "enable": "Enabled",
            "reset-password": "New password for",
            "delete": "Deleted",
        }
        said = f"{done[args.action]} {args.username}"
        if "devices_logged_out" in result:
            said += f"; {result['devices_logged_out']} devices logged out"
        if "groups_left" in result:
            said += f", {result['groups_left']} groups left"
        print(said + ".")


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> None:
    if not rows:
        print("(none)")
        return
    cells = [[_cell(row[c]) for c in columns] for row in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(columns, widths, strict=True)).rstrip())
    for line in cells:
        print("  ".join(v.ljust(w) for v, w in zip(line, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)
