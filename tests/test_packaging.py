"""What operators deploy with besides the image: packaging/kibitz.example.toml stays in step
with the code (it loads, names every setting and every key the built-in plugins read, each
at its default), and the reverse-proxy examples parse where caddy or nginx is installed.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from kibitz.plugin_manager import create_plugin_manager
from kibitz.plugins import moderation, outgoing_webhooks
from kibitz.settings import PluginSettings, Settings, load_settings

PACKAGING = Path(__file__).resolve().parent.parent / "packaging"
EXAMPLE = PACKAGING / "kibitz.example.toml"
NOT_SETTINGS = {"tables", "headings", "environ", "warnings"}
# The built-in plugins that read settings, and the hook that makes each.
PLUGIN_HOOKS = {
    "nats": "register_transport",
    "redis": "register_storage",
    "snowflake": "register_ids",
    "sequence": "register_ids",
    "webpush": "register_notifier",
    "webhook": "register_notifier",
}
# The built-in extensions that read settings, and what makes each from them.
EXTENSIONS: dict[str, Callable[[PluginSettings], object]] = {
    "moderation": moderation.create_plugin,
    "outgoing_webhooks": outgoing_webhooks.create_plugin,
}
# Keys without a default: the table of a plugin that has any is commented out in the
# example ("#[webhook]", "#url = ..."), with a sample value for each of these.
REQUIRED = {"webhook": {"url", "secret"}, "outgoing_webhooks": {"url", "secret"}}

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


class AskedSettings(PluginSettings):
    """A plugin's settings that remember which keys the plugin asked for."""

    def __init__(self, plugin: str, table: dict[str, Any]) -> None:
        super().__init__(plugin, table, {})
        self.asked: set[str] = set()

    def __getitem__(self, key: str) -> Any:
        self.asked.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        self.asked.add(key)
        return super().get(key, default)


def test_the_example_config_names_every_core_setting_at_its_default() -> None:
    settings = load_settings(str(EXAMPLE), environ={})
    top = {key for key, value in tomllib.loads(EXAMPLE.read_text()).items() if not isinstance(value, dict)}
    fields = {f.name for f in dataclasses.fields(Settings)} - NOT_SETTINGS
    assert top == fields, f"missing: {sorted(fields - top)}; not settings: {sorted(top - fields)}"
    default = Settings()
    changed = {f: getattr(settings, f) for f in fields if getattr(settings, f) != getattr(default, f)}
    assert not changed, f"the example sets these away from their defaults: {changed}"
    assert settings.warnings == ()


def _commented_table(name: str) -> dict[str, Any]:
    """The example's table ``name`` that is commented out: its lines from ``#[name]`` on
    that start with "#" and then no space (the others are comments), the "#" taken off."""
    lines = EXAMPLE.read_text().splitlines()
    block = lines[lines.index(f"#[{name}]") :]
    ended = next((n for n, line in enumerate(block) if not line.startswith("#")), len(block))
    toml = "\n".join(line[1:] for line in block[:ended] if not line.startswith("# "))
    table: dict[str, Any] = tomllib.loads(toml)[name]
    return table


def test_the_example_config_has_every_key_the_built_in_plugins_read() -> None:
    tables = dict(load_settings(str(EXAMPLE), environ={}).tables)
    assert set(tables) == {*PLUGIN_HOOKS, *EXTENSIONS} - set(REQUIRED)
    tables.update({name: _commented_table(name) for name in REQUIRED})
    for name in [*PLUGIN_HOOKS, *EXTENSIONS]:
        make = _maker(name)
        required = {key: tables[name][key] for key in REQUIRED.get(name, ())}
        given, blank = AskedSettings(name, dict(tables[name])), AskedSettings(name, required)
        from_example, from_defaults = make(given), make(blank)
        assert given.unknown() == [], f"[{name}]: keys the plugin does not read"
        assert blank.asked <= set(tables[name]), f"[{name}] lacks {sorted(blank.asked - set(tables[name]))}"
        # Each at its default: the plugin ends up with what it has when given nothing
        assert _plain(from_example) == _plain(from_defaults), name


def _maker(name: str) -> Callable[[PluginSettings], object]:
    """What makes the built-in plugin ``name`` from its settings."""
    if name in EXTENSIONS:
        return EXTENSIONS[name]
    hook = PLUGIN_HOOKS[name]
    slot = hook.removeprefix("register_")
    chosen = {"notify": (name,)} if slot == "notifier" else {slot: name}  # plugins load when chosen
    register = getattr(create_plugin_manager(Settings(**chosen)).hook, hook)
    return lambda settings: register(name=name, settings=settings)


def _plain(plugin: object) -> dict[str, Any]:
    """What a plugin object keeps from its settings: its attributes of plain types, and
    those of the Kibitz objects and settings schemas it holds (``kibitz.Deliveries``)."""
    plain = str | int | float | bool | list | tuple | None
    kept = {}
    for key, value in vars(plugin).items():
        if isinstance(value, plain):
            kept[key] = value
        elif isinstance(value, msgspec.Struct):  # a settings schema's values
            kept[key] = msgspec.structs.asdict(value)
        elif type(value).__module__.startswith("kibitz.") and hasattr(value, "__dict__"):
            kept[key] = _plain(value)
    return kept


def test_kibitz_loads_the_example_config() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KIBITZ_")}
    kibitz = Path(sys.executable).parent / "kibitz"
    result = subprocess.run(
        [str(kibitz), "plugins", "--config", str(EXAMPLE)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "* nats" in result.stdout and "* webpush" in result.stdout, result.stdout


@pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed")
def test_the_caddyfile_parses() -> None:
    for upstreams in ("127.0.0.1:8000", "kibitz-1:8000 kibitz-2:8000"):
        env = {**os.environ, "KIBITZ_DOMAIN": "chat.example.org", "KIBITZ_UPSTREAMS": upstreams}
        result = subprocess.run(
            ["caddy", "adapt", "--config", str(PACKAGING / "Caddyfile"), "--adapter", "caddyfile"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert all(f'"dial":"{u}"' in result.stdout for u in upstreams.split()), result.stdout


@pytest.mark.skipif(shutil.which("nginx", path="/usr/sbin:/usr/bin") is None, reason="nginx is not installed")
def test_the_nginx_config_parses(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    # A throw-away certificate where the example names Let's Encrypt's files
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "chat.example.org")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp_path / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp_path / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    site = (PACKAGING / "nginx.conf").read_text()
    site = site.replace("/etc/letsencrypt/live/chat.example.org/fullchain.pem", str(tmp_path / "cert.pem"))
    site = site.replace("/etc/letsencrypt/live/chat.example.org/privkey.pem", str(tmp_path / "key.pem"))
    (tmp_path / "kibitz.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path / 'nginx.pid'};\nerror_log {tmp_path / 'error.log'};\nevents {{}}\n"
        f"http {{\n  access_log off;\n  include {tmp_path / 'kibitz.conf'};\n}}\n"
    )
    nginx = shutil.which("nginx", path="/usr/sbin:/usr/bin")
    result = subprocess.run(
        [
            str(nginx),
            "-t",
            "-p",
            str(tmp_path),
            "-e",
            str(tmp_path / "error.log"),
            "-c",
            str(tmp_path / "nginx.conf"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
