"""Configuration: the TOML file, environment overrides, plugin tables, and clear errors."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from kibitz.errors import ConfigError
from kibitz.settings import load_settings


def test_environment_overrides_the_file(tmp_path: Path) -> None:
    config = tmp_path / "kibitz.toml"
    config.write_text('port = 9000\nregistration = "closed"\n[nats]\nretention_age = "7d"\n')
    settings = load_settings(str(config), {"KIBITZ_PORT": "9100", "KIBITZ_NATS_RETENTION_AGE": "1d"})
    assert settings.port == 9100
    assert settings.registration == "closed"
    nats = settings.plugin("nats")
    assert nats.duration("retention_age", "30d") == 86400
    assert nats.source("retention_age") == "KIBITZ_NATS_RETENTION_AGE"


def test_plugin_tables_under_plugins(tmp_path: Path) -> None:
    """``[plugins.NAME]`` is the plugin's table, and ``[plugins] enabled`` the extensions."""
    config = tmp_path / "kibitz.toml"
    config.write_text(
        'port = 9000\n[plugins]\nenabled = ["moderation", "commands"]\n'
        '[plugins.moderation]\nwords = ["darn"]\n[plugins.nats]\nretention_age = "7d"\n'
    )
    settings = load_settings(str(config), {})
    assert settings.plugins == ("moderation", "commands")
    assert settings.plugin("moderation")["words"] == ["darn"]
    assert settings.plugin("nats").duration("retention_age", "30d") == 7 * 86400
    assert settings.plugin("nats").source("retention_age") == "[plugins.nats] retention_age"


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            '[plugins.nats]\nurl = "embedded"\n[nats]\nurl = "embedded"\n',
            "[plugins.nats] and [nats] are the same",
        ),
        (
            "[plugins.moderatoin]\nwords = []\n",
            "[plugins.moderatoin] is no installed plugin's table; did you mean",
        ),
        ('[plugins]\nenable = ["commands"]\n', "[plugins] enable: only enabled = [...]"),
    ],
)
def test_bad_plugin_tables_are_refused(tmp_path: Path, text: str, error: str) -> None:
    config = tmp_path / "kibitz.toml"
    config.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(error)):
        load_settings(str(config), {})


def test_core_variables_are_not_a_plugins_settings() -> None:
    """KIBITZ_LOG_LEVEL belongs to the core even though a plugin is named ``log``."""
    settings = load_settings(environ={"KIBITZ_LOG_LEVEL": "warning", "KIBITZ_DATA_DIR": "/tmp/x"})
    assert settings.log_level == "WARNING"
    assert dict(settings.plugin("log")) == {}
    assert dict(settings.plugin("data")) == {}


def test_unread_plugin_settings_are_reported() -> None:
    settings = load_settings(environ={"KIBITZ_NATS_RETENTON_AGE": "1d"})
    nats = settings.plugin("nats")
    nats.get("url")
    assert nats.unknown() == ["KIBITZ_NATS_RETENTON_AGE"]


def test_database_urls_get_an_async_driver() -> None:
    url = load_settings(environ={"KIBITZ_DATABASE_URL": "postgresql://kibitz@db/chat"}).database_url
    assert url == "postgresql+asyncpg://kibitz@db/chat"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("KIBITZ_PORT", "abc"),
        ("KIBITZ_PORT", "70000"),
        ("KIBITZ_REGISTRATION", "maybe"),
        ("KIBITZ_RATE_LIMITS", "sometimes"),
        ("KIBITZ_LOG_LEVEL", "loud"),
        ("KIBITZ_DATABASE_URL", "mysql://x/y"),
        ("KIBITZ_PUBLIC_URL", "chat.example.com"),
        ("KIBITZ_PING_INTERVAL", "soon"),
        ("KIBITZ_PING_INTERVAL", "0.5s"),
        ("KIBITZ_TRUSTED_PROXIES", "10.0.0.0/8, proxy.internal"),
        ("KIBITZ_MAX_CONNECTIONS_PER_ADDRESS", "0"),
    ],
)
def test_bad_values_name_their_variable(variable: str, value: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        load_settings(environ={variable: value})


def test_sizes_and_durations() -> None:
    nats = load_settings(
        environ={"KIBITZ_NATS_A": "512MB", "KIBITZ_NATS_B": "90s", "KIBITZ_NATS_C": "x"}
    ).plugin("nats")
    assert nats.size("a", 0) == 512 * 1024**2
    assert nats.duration("b", 0) == 90
    with pytest.raises(ConfigError, match="KIBITZ_NATS_C"):
        nats.duration("c", 0)


def test_a_nats_password_never_shows_in_an_error() -> None:
    from kibitz.plugins.nats import NatsTransport

    settings = load_settings(environ={"KIBITZ_NATS_URL": "http://kibitz:s3cretpw@127.0.0.1:4222"}).plugin(
        "nats"
    )
    with pytest.raises(ConfigError) as error:
        NatsTransport(settings)
    assert "s3cretpw" not in str(error.value)
    assert "KIBITZ_NATS_URL" in str(error.value)
