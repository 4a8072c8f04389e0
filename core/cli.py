"""The ``kibitz`` command: ``serve``, ``plugins`` and the operator's commands, all reading
the same configuration."""

from __future__ import annotations

import argparse
import gc
import logging
import sys
from importlib.metadata import version
from typing import TYPE_CHECKING

from . import admin_cli, logs
from .datadir import DataFolderError, lock_data_folder
from .errors import ConfigError
from .http_protocol import KibitzProtocol
from .settings import Settings, load_settings

if TYPE_CHECKING:
    from sanic import DefaultSanic

GC_FIRST_GENERATION = 20_000  # new container objects between two young collections


SERVE_DESCRIPTION = """\
Run the chat server. With no settings it is the appliance: data in ./kibitz-data, and
NATS JetStream and Redis started as child processes; given URLs for NATS, Redis and a
database, it starts no child and uses those."""
SERVE_EPILOG = """\
Every setting can be given in the TOML file or as an environment variable, which wins:
KIBITZ_HOST, KIBITZ_PORT, KIBITZ_DATA_DIR, KIBITZ_PUBLIC_URL, KIBITZ_DATABASE_URL,
KIBITZ_NATS_URL, KIBITZ_REDIS_URL, KIBITZ_REGISTRATION, KIBITZ_PLUGINS and more:
docs/configuration.md lists them all."""


def main(argv: list[str] | None = None) -> int:
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument(
        "--config",
        metavar="FILE",
        default=argparse.SUPPRESS,  # given after the command; else the one before it counts
        help="a TOML file of settings (default: $KIBITZ_CONFIG, else none)",
    )
    parser = argparse.ArgumentParser(prog="kibitz", description="Kibitz, a self-hosted chat appliance.")
    parser.add_argument("--version", action="version", version=f"kibitz {version('kibitz')}")
    parser.add_argument("--config", metavar="FILE", help="a TOML file of settings (default: $KIBITZ_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands.add_parser(
        "serve",
        parents=[config],
        help="run the server (embedded NATS and Redis unless URLs are given)",
        description=SERVE_DESCRIPTION,
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands.add_parser("plugins", parents=[config], help="list the installed plugins and which are active")
    admin_cli.add_commands(commands, config)
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        # The operator's commands print what they did; their log lines are for trouble only.
        logs.configure(settings.log_level if args.command == "serve" else "WARNING")
        for warning in settings.warnings:
            logging.getLogger("kibitz").warning("unknown_setting", extra={"problem": warning})
        if args.command == "plugins":
            return plugins(settings)
        if args.command != "serve":
            return admin_cli.run(args, settings)
        return serve(settings)
    except ConfigError as e:
        print(f"kibitz: configuration error: {e}", file=sys.stderr)
        return 2


def serve(settings: Settings) -> int:
    from .app import create_app

    try:
        lock = lock_data_folder(settings.data_dir)
    except DataFolderError as e:
        print(f"kibitz: {e}", file=sys.stderr)
        return 1
    sanic = create_app(settings)
    sanic.after_server_start(_tune_garbage_collector)
    sanic.after_server_start(_say_where)
    log = logging.getLogger("kibitz")
    log.info("starting", extra={"host": settings.host, "port": settings.port})
    try:
        sanic.run(
            host=settings.host,
            port=settings.port,
            single_process=True,
            access_log=False,
            motd=False,
            protocol=KibitzProtocol,
        )
    except ConfigError:
        raise
    except Exception as e:
        log.error("start_failed", extra={"error": f"{type(e).__name__}: {e}"})
        print(f"kibitz: could not start: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        lock.close()
    return 0


async def _say_where(sanic: DefaultSanic) -> None:
    """One plain line for the person who started it, beside the JSON log lines."""
    settings = sanic.ctx.app.settings
    listening = f"http://{settings.host}:{settings.port}"
    public = f" (clients use {settings.url})" if settings.url != listening else ""
    signing_up = {
        "open": "anyone can sign up",
        "invite": "sign-up needs an invitation (kibitz invite create)",
        "closed": "sign-up is closed",
    }[settings.registration]
    print(
        f"Kibitz is listening on {listening}{public}; {signing_up}; data in {settings.data_dir.absolute()}. "
        "Ctrl-C stops it.",
        flush=True,
    )


async def _tune_garbage_collector(sanic: DefaultSanic) -> None:
    """Keep the cyclic garbage collector off the hot path (once serving, for this process).

    What start-up made lives as long as the process: ``gc.freeze()`` takes it out of
    every later collection. A serving process makes many short-lived containers (frames,
    events, futures): a larger first generation lets most of them die before a
    collection looks at them. The collector took about 12 % of the busy time at 2,000
    msg/s with the defaults (700, 10, 10).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_FIRST_GENERATION, 20, 20)


SLOTS = {
    "register_transport": "transport",
    "register_storage": "storage",
    "register_ids": "ids",
    "register_notifier": "notify",
}


def plugins(settings: Settings) -> int:
    """The installed plugins, grouped by the slot they fill (or as extensions)."""
    from .plugin_manager import installed_plugins

    chosen = {
        "transport": {settings.transport},
        "storage": {settings.storage},
        "ids": {settings.ids},
        "notify": set(settings.notify),
        "extension": set(settings.plugins),
    }
    rows: dict[str, list[tuple[str, str, str, list[str]]]] = {group: [] for group in chosen}
    for name, (module, package, hooks) in sorted(installed_plugins().items()):
        slots = [SLOTS[h] for h in hooks if h in SLOTS]
        others = [h for h in hooks if h not in SLOTS]
        for group in slots or ["extension"]:
            rows[group].append((name, module, package, others if group == "extension" else []))
    every = [entry for entries in rows.values() for entry in entries]
    name_width = max((len(entry[0]) for entry in every), default=0)
    module_width = max((len(entry[1]) for entry in every), default=0)
    for group, entries in rows.items():
        print(f"{group}:")
        for name, module, package, hooks in entries:
            mark = "*" if name in chosen[group] else " "
            extra = f"  ({', '.join(hooks)})" if hooks else ""
            print(f"  {mark} {name:<{name_width}}  {module:<{module_width}}  {package}{extra}")
    print("* = active with this configuration")
    return 0


if __name__ == "__main__":
    sys.exit(main())
