"""Kibitz: a self-hosted chat appliance. The public names plugins import."""

from .app_protocol import App
from .commands import Command
from .deliveries import Deliveries
from .errors import ApiError, ConfigError, CursorExpired, InvalidRequest, NotFound, Rejected, Unavailable
from .hookspecs import PLUGIN_API, hookimpl
from .ids import EPOCH_MS, TIME_SHIFT, IdsUnavailable, first_id_of
from .inputs import decode, path_id
from .leases import Lease, Leases, LeaseUnavailable
from .logs import redact_url
from .models import Conversation, Device, Draft, LogEntry, Message, PushSubscription, User
from .openapi import operation as openapi_operation
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
    "ApiError",
    "App",
    "BackupRecords",
    "ChildProcess",
    "Command",
    "ConfigError",
    "Conversation",
    "CursorExpired",
    "Deliveries",
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
    "decode",
    "find_binary",
    "first_id_of",
    "free_port",
    "hookimpl",
    "openapi_operation",
    "path_id",
    "redact_url",
    "retry_pause",
    "retryable",
]
