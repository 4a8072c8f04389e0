"""The ``kibitz`` command: ``serve`` and ``plugins``, both reading the same configuration."""

from __future__ import annotations

import argparse
import logging
import sys

from . import logs
from .errors import ConfigError
from .settings import Settings, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kibitz", description="Kibitz, a self-hosted chat appliance.")
    parser.add_argument("--config", help="a TOML file (default: $KIBITZ_CONFIG, else none)")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the server (embedded NATS and Redis unless URLs are given)")
    commands.add_parser("plugins", help="list the installed plugins and which are active")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        logs.configure(settings.log_level)
        if args.command == "plugins":
            return plugins(settings)
        return serve(settings)
    except ConfigError as e:
        print(f"kibitz: configuration error: {e}", file=sys.stderr)
        return 2


def serve(settings: Settings) -> int:
    from .app import create_app

    app = create_app(settings)
    log = logging.getLogger("kibitz")
    log.info("starting", extra={"host": settings.host, "port": settings.port})
    try:
        app.run(host=settings.host, port=settings.port, single_process=True, access_log=False, motd=False)
    except Exception as e:
        log.error("start_failed", extra={"error": f"{type(e).__name__}: {e}"})
        print(f"kibitz: could not start: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


def plugins(settings: Settings) -> int:
    from .plugin_manager import installed_plugins

    active = {settings.transport, settings.storage, settings.ids, *settings.notify, *settings.plugins}
    for name, module in sorted(installed_plugins().items()):
        print(f"{'*' if name in active else ' '} {name:<16} {module}")
    print("(* active with this configuration)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
