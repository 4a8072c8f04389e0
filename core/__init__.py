"""Kibitz: a self-hosted chat appliance. The public names plugins import."""

from .app_protocol import App
from .commands import Command
from .errors import ConfigError, CursorExpired, InvalidRequest, NotFound, Rejected, Unavailable
from .hookspecs import PLUGIN_API, hookimpl
from .ids import EPOCH_MS, TIME_SHIFT, IdsUnavailable, first_id_of
from .leases import Lease, Leases, LeaseUnavailable
from .logs import redact_url
from .models import Conversation, Device, Draft, LogEntry, Message, PushSubscription, User
from .outbound import Outbound, check_url, retry_pause, retryable
from .plugin_settings import Duration, Size
from .push import Push
from .settings import PluginSettings, Settings
from .slots import (
    BackupRecords,
    Finding,
    IdGenerator,
    LiveEvent,
    LiveSignal,
    Notifier,
    Page,
    Storage,
    StoredMessage,
    Transport,
)
from .supervisor import ChildProcess, find_binary, free_port
from .tasks import Tasks

__all__ = [
    "EPOCH_MS",
    "PLUGIN_API",
    "TIME_SHIFT",
    "App",
    "BackupRecords",
    "ChildProcess",
    "Command",
    "ConfigError",
    "Conversation",
    "CursorExpired",
    "Device",
    "Draft",
    "Duration",
    "Finding",
    "IdGenerator",
    "IdsUnavailable",
    "InvalidRequest",
    "Lease",
    "LeaseUnavailable",
    "Leases",
    "LiveEvent",
    "LiveSignal",
    "LogEntry",
    "Message",
    "NotFound",
    "Notifier",
    "Outbound",
    "Page",
    "PluginSettings",
    "Push",
    "PushSubscription",
    "Rejected",
    "Settings",
    "Size",
    "Storage",
    "StoredMessage",
    "Tasks",
    "Transport",
    "Unavailable",
    "User",
    "check_url",
    "find_binary",
    "first_id_of",
    "free_port",
    "hookimpl",
    "redact_url",
    "retry_pause",
    "retryable",
]
