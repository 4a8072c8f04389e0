"""What an operator meets: the command line, the data folder and its lock, typos in
settings, and a stop they asked for that is quiet and clean."""

from __future__ import annotations

import signal
import stat
import subprocess
from pathlib import Path

import orjson
import pytest

from kibitz.supervisor import free_port

from .kibitz_client import KIBITZ, Client, Server, make_server
from .test_lifecycle import children, gone
from .test_plugins import clean_environ

# Starts processes or services of its own: not in the fast tier (pytest -m 'not services').
pytestmark = pytest.mark.services


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([KIBITZ, *args], env=env, capture_output=True, text=True, timeout=60)


def one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{done.stderr[-3000:]}"
    return lines[0]


def log_events(server: Server) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def test_version_and_help(tmp_path: Path) -> None:
    env = clean_environ(tmp_path)
    assert run(env, "--version").stdout.strip() == "kibitz 0.1.0"
    help_text = run(env, "serve", "--help").stdout
    assert "--config FILE" in help_text and "KIBITZ_DATA_DIR" in help_text, help_text


async def test_serve_takes_config_after_the_command_and_says_where_it_listens(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "kibitz.toml"
    config.write_text(f'port = {port}\nregistration = "closed"\n')
    server = make_server(tmp_path / "data", KIBITZ_PORT="")
    server.env.pop("KIBITZ_PORT")
    server.env.pop("KIBITZ_REGISTRATION")
    server.env.pop("KIBITZ_PUBLIC_URL")
    server.url = f"http://127.0.0.1:{port}"
    server.args = ("--config", str(config))
    server.start()
    try:
        client = Client(server)
        r = await client.http.post("/accounts", json={"username": "nobody", "password": "long enough"})
        assert r.status_code == 403, r.text  # the file's registration = "closed"
        await client.close()
        greeting = [line for line in server.log().splitlines() if line.startswith("Kibitz is")]
        where = f"{server.url}; sign-up is closed; data in {server.data_dir}"
        assert greeting == [f"Kibitz is listening on {where}. Ctrl-C stops it."]
    finally:
        server.stop()


def test_a_second_kibitz_on_the_same_data_folder_is_refused(tmp_path: Path) -> None:
    first = make_server(tmp_path / "data")
    first.start()
    try:
        assert first.process is not None
        nats_config = (first.data_dir / "nats" / "nats-server.conf").read_text()
        second = make_server(tmp_path / "data")
        done = run(second.env, "serve")
        assert done.returncode == 1
        line = one_line(done)
        assert str(first.data_dir) in line and str(first.process.pid) in line, line
        assert (first.data_dir / "nats" / "nats-server.conf").read_text() == nats_config  # untouched
        assert set(children(first)) >= {"nats-server", "redis-server"}
        assert stat.S_IMODE(first.data_dir.stat().st_mode) == 0o700  # it holds hashes and keys
    finally:
        first.stop()
    again = make_server(tmp_path / "data")  # the lock went with the first process
    again.start()
    again.stop()


def test_a_data_folder_that_cannot_be_used_is_one_line_naming_it(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    for folder, reason in [(a_file, "is a file"), (a_file / "data", "not a directory")]:
        env = {**clean_environ(tmp_path), "KIBITZ_DATA_DIR": str(folder)}
        done = run(env, "serve")
        assert done.returncode == 1
        line = one_line(done)
        assert str(folder) in line and reason in line, line


def test_unknown_settings_are_named_with_the_closest_known_one(tmp_path: Path) -> None:
    env = {**clean_environ(tmp_path), "KIBITZ_PROT": "9000"}
    done = run(env, "plugins")
    assert done.returncode == 0
    warnings = [orjson.loads(line) for line in done.stderr.splitlines()]
    assert [w["problem"] for w in warnings] == [
        "KIBITZ_PROT: not a Kibitz setting, ignored; did you mean KIBITZ_PORT?"
    ]

    config = tmp_path / "kibitz.toml"
    config.write_text('[redsi]\nurl = "redis://127.0.0.1:6390"\n')
    done = run(clean_environ(tmp_path), "plugins", "--config", str(config))
    assert done.returncode == 2
    assert "[redsi]" in one_line(done) and "did you mean redis?" in one_line(done)

    # A typo of KIBITZ_LOG_LEVEL looks like a setting of the log notifier: an error while
    # that plugin is in use (its settings are checked), a warning while it is not.
    typo = {**clean_environ(tmp_path), "KIBITZ_LOG_LEVL": "debug"}
    done = run({**typo, "KIBITZ_NOTIFY": "log"}, "serve")
    assert done.returncode == 2
    assert "did you mean KIBITZ_LOG_LEVEL?" in one_line(done)
    done = run(typo, "plugins")
    (warning,) = [orjson.loads(line)["problem"] for line in done.stderr.splitlines()]
    assert warning == (
        "KIBITZ_LOG_LEVL: not a Kibitz setting, and the log plugin is not in use; "
        "did you mean KIBITZ_LOG_LEVEL?"
    )


def test_ctrl_c_stops_everything_quietly(tmp_path: Path) -> None:
    """Ctrl-C sends SIGINT to the terminal's whole foreground group: Kibitz stops its
    children itself, and nothing on the way out is logged as a warning or an error."""
    server = make_server(tmp_path / "data")
    server.start()
    running = children(server)
    assert server.stop(signal.SIGINT, group=True) == 0
    events = log_events(server)
    after_ready = events[[e["event"] for e in events].index("ready") :]
    noisy = [e for e in after_ready if e["level"] in ("warning", "error", "critical")]
    assert noisy == [], noisy
    assert after_ready[-1]["event"] == "stopped"
    assert all(gone(pid) for pid in running.values()), running
