"""Kibitz: a self-hosted chat appliance. The public names plugins import."""

from .errors import ConfigError, CursorExpired, Rejected, Unavailable
from .hookspecs import hookimpl
from .ids import EPOCH_MS, TIME_SHIFT, IdsUnavailable, first_id_of
from .leases import Lease, Leases, LeaseUnavailable
from .logs import redact_url
from .models import Conversation, Device, Draft, LogEntry, Message, PushSubscription, User
from .outbound import Outbound, check_url
from .settings import PluginSettings
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
    "TIME_SHIFT",
    "BackupRecords",
    "ChildProcess",
    "ConfigError",
    "Conversation",
    "CursorExpired",
    "Device",
    "Draft",
    "Finding",
    "IdGenerator",
    "IdsUnavailable",
    "Lease",
    "LeaseUnavailable",
    "Leases",
    "LiveEvent",
    "LiveSignal",
    "LogEntry",
    "Message",
    "Notifier",
    "Outbound",
    "Page",
    "PluginSettings",
    "PushSubscription",
    "Rejected",
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
]
