"""Building the server: the ``Kibitz`` services object and the Sanic application.

One name each, everywhere: ``app`` is the services object (``kibitz.App`` to plugins;
handlers reach it as ``request.app.ctx.app``), ``sanic`` the Sanic application.

``create_app(settings)`` loads the configured plugins, fills the slots (a bad name or
setting raises ``ConfigError`` here, before anything starts), wires the services and
registers the routes. The Sanic listeners then start everything in order, drain on
shutdown, and stop everything in reverse.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import socket
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from sanic import DefaultSanic, Request, Sanic
from sanic.http.http1 import Http
from sanic.response import BaseHTTPResponse

from . import admin_api, api, operations, push, web_client
from .accounts import Accounts
from .admin import Admin, AdminSocket
from .app_protocol import App
from .clients import Clients
from .commands import gather_commands
from .conversations import Conversations
from .cursors import Cursors, load_cursor_key
from .database import create_engine, migrate
from .disk import DiskWatch
from .errors import ConfigError, Forbidden, InvalidRequest, NotFound
from .gateways import sync, ws
from .hub import Hub
from .inputs import MAX_CLIENT_MSG_ID
from .leases import Leases
from .messages import Messages, StorageFollower
from .metrics import Metrics
from .models import Conversation, Message, User
from .notifications import NotificationFollower
from .openapi import plugin_path
from .plugin_manager import Hooks, create_plugin_manager, fill_slot
from .presence import Presence
from .progress import ProgressDisplay
from .push import Push
from .ratelimit import RateLimits
from .registry import Registry
from .retention import HistoryRetention
from .settings import Settings
from .slots import IdGenerator, Notifier, Storage, Transport
from .tasks import Tasks

log = logging.getLogger("kibitz")

_app_numbers = itertools.count()


class StartupError(Exception):
    """A part of the server could not start; the message names the part."""


class _Part(Protocol):
    """What every slot has: started with the app, closed in reverse order."""

    async def start(self, app: App) -> None: ...

    async def close(self) -> None: ...


class Kibitz:
    """Every service of one running instance; plugins see it as ``kibitz.App``."""

    def __init__(self, settings: Settings, plugins: Iterable[object] = ()) -> None:
        self.settings = settings
        self.data_dir = settings.data_dir.resolve()
        self.instance_id = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.pm = create_plugin_manager(settings, plugins)
        self.ids: IdGenerator = fill_slot(self.pm, "ids", settings.ids, settings)
        self.transport: Transport = fill_slot(self.pm, "transport", settings.transport, settings)
        self.storage: Storage = fill_slot(self.pm, "storage", settings.storage, settings)
        self.notifiers: list[Notifier] = [
            fill_slot(self.pm, "notifier", n, settings) for n in settings.notify
        ]
        self.metrics = Metrics()
        self.hooks = Hooks(
            self.pm, self.metrics, settings.plugin_timeout, settings.pre_send_failure == "closed"
        )
        self.tasks = Tasks()  # background work of every part; shutdown waits for it
        self.disk = DiskWatch(self.data_dir, settings.disk_reserve, self.metrics)
        self.engine = create_engine(settings.sqlalchemy_url)
        self.leases = Leases(self.engine, self.instance_id)
        self.accounts = Accounts(self.engine, settings.registration)
        self.push = Push(self.engine, settings.push_allow_insecure)
        self.conversations = Conversations(self.engine, self.transport, self.storage)
        self.hub = Hub(self.metrics, self.conversations.forget)
        self.registry = Registry(self.engine, self.instance_id, settings.url, lambda: self.hub.count)
        self.presence = Presence(self.transport, self.tasks)
        self.notifications = NotificationFollower(self)
        self.follower = StorageFollower(self.transport, self.storage)
        self.retention = HistoryRetention(self.storage, self.ids, settings.history_retention)
        self.messages = Messages(
            self,
            self.hooks,
            self.transport,
            self.storage,
            self.ids,
            settings.max_message_chars,
            self.follower,
        )
        self.rate_limits = RateLimits(settings.rate_limits, settings.rate_limit_url)
        self.clients = Clients(
            settings.trusted_proxies, settings.max_connections_per_address if settings.rate_limits else None
        )
        self.admin = Admin(self)  # the operator's actions (kibitz user ..., kibitz invite ...)
        self.admin_socket = AdminSocket(self.admin, self.data_dir)
        self.commands = gather_commands(self.pm, self)
        self.cursors = Cursors(b"")
        self.openapi_paths: dict[str, dict[str, Any]] = {}  # of the routes plugins registered
        self.ready = False
        self.stopping = asyncio.Event()
        self._started: list[_Part] = []
        self._starting = ""

    async def user(self, user_id: int) -> User:
        return await self.accounts.get(user_id)

    async def conversation(self, conversation_id: int) -> Conversation | None:
        return await self.conversations.get(conversation_id)

    async def authenticated(self, request: Request) -> User:
        user, _ = await api.authenticate(request)
        return user

    async def bot(self, username: str, display_name: str | None = None) -> User:
        return await self.accounts.bot(username, display_name)

    async def add_member(self, conversation_id: int, user_id: int) -> Conversation:
        conversation = await self.conversations.get(conversation_id)
        if conversation is None:
            raise NotFound("no such conversation")
        if not await self.accounts.existing({user_id}):
            raise InvalidRequest("user_id: no such user")
        return await self.conversations.add_member(conversation, user_id)

    async def post(
        self, sender: User, conversation_id: int, body: str, client_msg_id: str | None = None
    ) -> Message:
        key = uuid.uuid4().hex if client_msg_id is None else client_msg_id
        if not 1 <= len(key) <= MAX_CLIENT_MSG_ID:
            raise InvalidRequest(f"client_msg_id: 1 to {MAX_CLIENT_MSG_ID} characters")
        if not await self.accounts.is_active(sender.id):
            raise Forbidden(f"the account {sender.username!r} is disabled")
        message, _, _ = await self.messages.submit(sender, conversation_id, body, key)
        return message

    async def start(self) -> None:
        """Start every part, in dependency order; storage catches up with the log before ready.

        If a part fails, the parts already started are stopped and the error names the part.
        """
        try:
            await self._start_parts()
            await self.hooks.call_each("startup", stop_on=(ConfigError,), app=self)
        except ConfigError as e:  # a setting only a started part can check (a webhook's address)
            await self.stop()
            raise ConfigError(str(e)) from None
        except Exception as e:
            await self.stop()
            raise StartupError(f"{self._starting}: {type(e).__name__}: {e}") from e
        self.ready = True
        log.info("ready", extra={"url": self.settings.url, "instance": self.instance_id})

    async def _start_parts(self) -> None:
        self._starting = "database"
        await asyncio.to_thread(self.data_dir.mkdir, parents=True, exist_ok=True)
        await self.disk.start()
        await migrate(self.engine)
        self.cursors = Cursors(await load_cursor_key(self.engine))
        await self.push.start()
        self.transport.listen(self.hub.on_event, self.hub.on_signal)
        slots: list[tuple[str, str, _Part]] = [
            ("ids", self.settings.ids, self.ids),
            ("transport", self.settings.transport, self.transport),
            ("storage", self.settings.storage, self.storage),
        ]
        slots += [("notifier", name, n) for name, n in zip(self.settings.notify, self.notifiers, strict=True)]
        for slot, name, part in slots:
            self._starting = f"{slot} {name}"
            await part.start(self)
            self._started.append(part)
        self._starting = "storage catching up with the log"
        rebuild = ProgressDisplay("storage rebuild")
        caught_up = await self.follower.catch_up(rebuild)
        rebuild.close()
        if caught_up:
            log.info("storage_caught_up", extra={"messages": caught_up})
        self.follower.start()
        self.retention.start()
        if self.notifiers:
            self.notifications.start()
        self._starting = "admin socket"
        await self.admin_socket.start()

    async def drain(self) -> None:
        """Stop taking live connections and let the ones open go (they resume elsewhere)."""
        self.ready = False
        self.stopping.set()
        await self.registry.close()  # out of /discovery at once: new clients go elsewhere
        self.hub.close_all()
        await ws.close_all(self)
        await self.messages.drain()
        await self.tasks.wait()
        await self.hooks.call_each("shutdown", app=self)

    async def stop(self) -> None:
        await self.registry.close()
        await self.admin_socket.close()
        await self.disk.stop()
        self.presence.close()
        await self.tasks.wait()  # what closing connections started after the drain
        await self.notifications.stop()
        await self.retention.stop()
        await self.follower.stop()
        for part in reversed(self._started):
            try:
                await part.close()
            except Exception:
                log.exception("close_failed", extra={"part": type(part).__name__})
        self._started.clear()
        await self.rate_limits.close()
        with contextlib.suppress(Exception):
            await self.engine.dispose()
        log.info("stopped")


def _register_plugin_routes(sanic: DefaultSanic, app: Kibitz) -> None:
    """Let plugins add routes; a path (and method) already taken stops start-up."""
    taken = {(route.path.strip("/"), method) for route in sanic.router.routes for method in route.methods}

    def register(
        path: str, handler: Any, methods: Iterable[str] = ("GET",), openapi: Mapping[str, Any] | None = None
    ) -> None:
        methods = [method.upper() for method in methods]
        for method in methods:
            key = (path.strip("/"), method)
            if key in taken:
                raise ConfigError(f"plugin route {method} {path}: the path is already taken")
            taken.add(key)
        sanic.add_route(handler, path, methods=methods, name=f"plugin_{len(taken)}")
        if openapi is not None:
            documented, item = plugin_path(path)
            item = app.openapi_paths.setdefault(documented, item)
            item.update({method.lower(): openapi for method in methods})

    for impl in reversed(app.pm.hook.register_routes.get_hookimpls()):
        kwargs = {"register": register, "app": app}
        impl.function(*(kwargs[a] for a in impl.argnames))


def create_app(settings: Settings, plugins: Iterable[object] = ()) -> DefaultSanic:
    """The Sanic application of one Kibitz instance (``plugins``: extra plugin objects, for tests)."""
    app = Kibitz(settings, plugins)
    sanic = Sanic(f"kibitz{next(_app_numbers)}", configure_logging=False)
    sanic.config.update(
        {
            "REQUEST_MAX_SIZE": 1024 * 1024,
            "RESPONSE_TIMEOUT": 90,
            "REQUEST_TIMEOUT": 30,
            "KEEP_ALIVE_TIMEOUT": 75,
            "GRACEFUL_SHUTDOWN_TIMEOUT": 10,
            "WEBSOCKET_MAX_SIZE": settings.max_frame_bytes,
            "WEBSOCKET_PING_INTERVAL": None,  # gateways.keepalive pings every socket from one task
            "ACCESS_LOG": False,
            "MOTD": False,
            "NOISY_EXCEPTIONS": False,
        }
    )
    sanic.ctx.app = app
    api.register(sanic)
    push.register(sanic)
    admin_api.register(sanic)
    sync.register(sanic)
    ws.register(sanic, settings.ping_interval)
    operations.register(sanic, app)
    web_client.register(sanic, app.registry)
    _register_plugin_routes(sanic, app)

    @sanic.before_server_start
    async def _start(sanic: DefaultSanic) -> None:
        await app.start()

    @sanic.after_server_start
    async def _listed(sanic: DefaultSanic) -> None:
        app.registry.start()  # in /discovery once it listens (an admin command never is)

    @sanic.before_server_stop
    async def _drain(sanic: DefaultSanic) -> None:
        await app.drain()

    async def _close_when_stopping(request: Request, response: BaseHTTPResponse) -> None:
        """While the server drains, each answer closes its connection: Sanic closes idle
        connections once, so one busy then (a long poll's next poll) would stay open, idle,
        and hold the stop up to its graceful timeout."""
        if app.stopping.is_set() and isinstance(request.stream, Http):
            request.stream.keep_alive = False

    sanic.register_middleware(_close_when_stopping, "response")

    @sanic.after_server_stop
    async def _stop(sanic: DefaultSanic) -> None:
        await app.stop()

    return sanic
