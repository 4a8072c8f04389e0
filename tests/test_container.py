"""The container image: the Dockerfile builds, and the image is the appliance in one container.

The real Dockerfile is built with Debian's podman and runc, as root, on a Debian bookworm
base made here with debootstrap: public image registries may be out of reach, Debian's
mirror and PyPI are not. The image then runs with a volume and a published port; two
users chat over WebSocket; the processes are checked (tini as PID 1 reaping orphans,
nobody root), the HEALTHCHECK is run; SIGTERM must stop it promptly with status 0,
Kibitz having stopped NATS and Redis itself; a new container on the same volume (an
upgrade) must still hold the accounts, the history and the log behind the cursors.

Cached under ``~/.cache/kibitz-container/``: the debootstrap rootfs as a tarball (made
once, in under a minute) and a podman image store of this test's own (``storage/``), whose
layer cache turns a rebuild after a change of the source into seconds. The machine's own
podman store is left alone. Delete the folder to start cold. The base image adds this
machine's CA bundle for pip in the builder (``/etc/pip.conf``), as a site's own base
image would carry its CA: a TLS-inspecting proxy must not stop the build.

Skipped, saying why, where podman, runc or debootstrap is missing (``make test`` installs
them with apt-get where it runs as root) or where the test does not run as root.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kibitz.supervisor import free_port

from .kibitz_client import Client, Server, Socket, poll_until

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path.home() / ".cache" / "kibitz-container"
ROOTFS = CACHE / "debian-bookworm-minbase.tar"
STORAGE = CACHE / "storage"
RUN_ROOT = Path("/run/kibitz-container")  # podman's state of running containers, gone at reboot
MIRROR = "http://deb.debian.org/debian"
RAW_BASE = "localhost/kibitz-debootstrap:bookworm"
BASE = "localhost/kibitz-base:bookworm"
IMAGE = "localhost/kibitz:test"
BUILDER = "localhost/kibitz-builder:test"
UID = "10001"  # the Dockerfile's user kibitz
STOP_WITHIN = 15.0  # seconds from SIGTERM to exit: Kibitz drains, then stops its two children


# PATH with the sbin folders, where runc and debootstrap are, and what they and podman call
# (chroot, iptables): a root shell without them on PATH must not make the test skip or fail.
PATH = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/local/sbin", "/usr/sbin", "/sbin"])


def _tool(name: str) -> str | None:
    return shutil.which(name, path=PATH)


def _why_not() -> str | None:
    if sys.platform != "linux":
        return "the container test runs on Linux only"
    if os.geteuid() != 0:
        return "the container test runs podman as root (rootless podman needs subuid ranges)"
    missing = [tool for tool in ("podman", "runc", "debootstrap") if _tool(tool) is None]
    if missing:
        return f"{', '.join(missing)} not installed (make test installs them with apt-get where it may)"
    return None


pytestmark = [
    pytest.mark.services,
    pytest.mark.container,
    pytest.mark.skipif(_why_not() is not None, reason=_why_not() or ""),
]


class Podman:
    """``podman`` as root with runc, this test's containers.conf and its own image store."""

    def __init__(self, folder: Path) -> None:
        conf = folder / "containers.conf"
        # default_ulimits: podman's default nofile limit fails to apply on this kind of
        # machine. tmp_dir beside the run root, so this store's state stays its own.
        conf.write_text(
            "[containers]\ndefault_ulimits = []\n"
            f'[engine]\ntmp_dir = "{RUN_ROOT / "libpod"}"\nevents_logger = "file"\n'
        )
        self.env = {**os.environ, "PATH": PATH, "CONTAINERS_CONF": str(conf)}
        podman, runc = str(_tool("podman")), str(_tool("runc"))
        self.argv = [podman, "--runtime", runc, "--root", str(STORAGE), "--runroot", str(RUN_ROOT)]

    def __call__(
        self, *args: str, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*self.argv, *args], env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"podman {' '.join(args)} exited with {result.returncode}:\n"
                f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result

    def exists(self, image: str) -> bool:
        return self("image", "exists", image, check=False).returncode == 0

    def image_id(self, image: str) -> str | None:
        found = self("image", "inspect", "--format", "{{.Id}}", image, check=False)
        return found.stdout.strip() if found.returncode == 0 else None

    def state(self, container: str) -> dict[str, object]:
        state: dict[str, object] = json.loads(
            self("inspect", "--format", "{{json .State}}", container).stdout
        )
        return state

    def logs(self, container: str) -> str:
        found = self("logs", container, check=False)
        return found.stdout + found.stderr

    def processes(self, container: str) -> list[dict[str, str]]:
        """The container's processes: pid (inside), ppid, hpid (on the host), user, comm, state."""
        fields = ["pid", "ppid", "hpid", "user", "comm", "state"]
        lines = self("top", container, *fields).stdout.splitlines()[1:]
        return [dict(zip(fields, line.split(), strict=True)) for line in lines if line.strip()]


def _mounts_under(folder: Path) -> list[str]:
    """Mount points at or below ``folder`` (debootstrap mounts /proc and /sys in its target)."""
    with open("/proc/self/mountinfo") as mountinfo:
        points = [line.split()[4] for line in mountinfo]
    return [p for p in points if p == str(folder) or p.startswith(f"{folder}/")]


def _debootstrap() -> None:
    """A minimal Debian bookworm rootfs, kept as a tarball in the cache."""
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="rootfs-", dir=CACHE))
    target = work / "rootfs"
    try:
        made = subprocess.run(
            [str(_tool("debootstrap")), "--variant=minbase", "bookworm", str(target), MIRROR],
            env={**os.environ, "PATH": PATH},
            capture_output=True,
            text=True,
            timeout=900,
        )
        if made.returncode != 0:
            pytest.skip(f"debootstrap could not make a Debian base from {MIRROR}: {made.stdout[-1500:]}")
        for cache in ("var/cache/apt/archives", "var/lib/apt/lists"):  # as a slim image has it
            subprocess.run(["find", str(target / cache), "-type", "f", "-delete"], check=True)
        part = ROOTFS.with_suffix(".part")
        subprocess.run(["tar", "-C", str(target), "-cf", str(part), "."], check=True, timeout=300)
        part.rename(ROOTFS)
    finally:
        for point in reversed(_mounts_under(work)):
            subprocess.run(["umount", "--lazy", point], check=False)
        if _mounts_under(work):  # never delete through a mount
            raise AssertionError(f"{work}: still mounted below it; unmount and delete it by hand")
        shutil.rmtree(work)


def _host_ca_bundle() -> Path | None:
    """The CA bundle this machine trusts, as pip here is told (PIP_CERT) or Python finds it."""
    for candidate in (
        os.environ.get("PIP_CERT"),
        os.environ.get("SSL_CERT_FILE"),
        ssl.get_default_verify_paths().cafile,
    ):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def _build(podman: Podman, tag: str, context: Path, *args: str) -> str:
    """Build ``tag`` and return its id. The image the tag named before is removed, with the
    layers only it used: the store keeps one build of each tag, and the cache of its steps."""
    before = podman.image_id(tag)
    iidfile = context.parent / f"{context.name}.iid"
    podman("build", "--pull=never", f"--iidfile={iidfile}", "-t", tag, *args, str(context), timeout=900)
    built = iidfile.read_text().strip().removeprefix("sha256:")
    if before and before != built:
        podman("rmi", before, check=False)  # fails only while a container uses it
    return built


def _base_image(podman: Podman, work: Path) -> None:
    """``BASE``: Debian bookworm from debootstrap, plus this machine's CA bundle for pip."""
    if not podman.exists(RAW_BASE):
        if not ROOTFS.is_file():
            _debootstrap()
        podman("import", str(ROOTFS), RAW_BASE, timeout=300)
    context = work / "base"
    context.mkdir()
    lines = [f"FROM {RAW_BASE}"]
    bundle = _host_ca_bundle()
    if bundle is not None:
        shutil.copyfile(bundle, context / "ca.pem")
        (context / "pip.conf").write_text("[global]\ncert = /etc/ssl/kibitz-host-ca.pem\n")
        lines += ["COPY ca.pem /etc/ssl/kibitz-host-ca.pem", "COPY pip.conf /etc/pip.conf"]
    (context / "Containerfile").write_text("\n".join(lines) + "\n")
    _build(podman, BASE, context)


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    """The test's podman, held by this run alone: two runs at once (two people testing on
    one machine) take turns, so neither removes an image the other is about to start."""
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        podman = Podman(tmp_path_factory.mktemp("podman"))
        info = podman("info", check=False, timeout=60)
        if info.returncode != 0:
            pytest.skip(f"podman cannot run here: {info.stderr.strip()[-500:]}")
        yield podman


@pytest.fixture(scope="module")
def image(podman: Podman, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image built from the Dockerfile, by id.

    The builder stage is tagged too (``BUILDER``), so that its previous build is removed
    like the image's, rather than left untagged in the store.
    """
    _base_image(podman, tmp_path_factory.mktemp("build"))
    args = ["--format=docker", f"--build-arg=BASE={BASE}", "-f", str(ROOT / "Dockerfile")]
    _build(podman, BUILDER, ROOT, *args, "--target=builder")
    return _build(podman, IMAGE, ROOT, *args)  # --format=docker: podman's OCI has no HEALTHCHECK


class Run:
    """The containers and the volume of one test, removed at the end."""

    def __init__(self, podman: Podman, image: str) -> None:
        self.podman = podman
        self.image = image
        self.volume = f"kibitz-test-{uuid.uuid4().hex[:10]}"
        self.containers: list[str] = []
        podman("volume", "create", self.volume)

    def start(self) -> tuple[str, Server]:
        """A new container on the volume, its port 8000 published on a free port; once ready."""
        name = f"kibitz-test-{uuid.uuid4().hex[:10]}"
        port = free_port()
        self.containers.append(name)
        self.podman(
            "run",
            "-d",
            "--name",
            name,
            "-v",
            f"{self.volume}:/data",
            "-p",
            f"127.0.0.1:{port}:8000",
            self.image,
        )
        server = Server(url=f"http://127.0.0.1:{port}", data_dir=Path("/data"), env={})

        def ready() -> bool:
            try:
                if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                    return True
            except httpx.HTTPError:
                pass
            status = self.podman.state(name)["Status"]
            assert status == "running", f"the container is {status}:\n{self.podman.logs(name)[-3000:]}"
            return False

        poll_until(ready, 120, f"readiness of the container {name}")
        return name, server

    def stop(self, name: str) -> None:
        """SIGTERM (podman stop): a prompt exit with status 0, no process left, children stopped in order."""
        started = {p["hpid"]: _start_time(p["hpid"]) for p in self.podman.processes(name)}
        began = time.monotonic()
        self.podman("stop", "--time", "30", name, timeout=60)  # SIGTERM, SIGKILL after 30 s
        took = time.monotonic() - began
        state, log = self.podman.state(name), self.podman.logs(name)
        assert state["ExitCode"] == 0, f"exit status {state['ExitCode']}:\n{log[-3000:]}"
        assert took < STOP_WITHIN, f"SIGTERM took {took:.1f} s to stop the container"
        left = [pid for pid, start in started.items() if _start_time(pid) == start]
        assert not left, f"processes left on the host after the stop: {left}"
        events = [(e["event"], e.get("child")) for e in _log_lines(log)]
        stopped = [e for e in events if e[0] in ("child_stopped", "stopped")]
        assert stopped == [
            ("child_stopped", "redis-server"),
            ("child_stopped", "nats-server"),
            ("stopped", None),
        ]

    def close(self) -> None:
        for name in self.containers:
            self.podman("rm", "--force", "--time", "0", name, check=False)
        self.podman("volume", "rm", "--force", self.volume, check=False)


def _start_time(pid: str) -> str | None:
    """The start time of host process ``pid`` (to tell it from a later one with its number)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()[19]


def _log_lines(log: str) -> list[dict[str, str]]:
    """Kibitz's JSON log lines in ``podman logs``."""
    lines = []
    for line in log.splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


@pytest.fixture
def run(podman: Podman, image: str) -> Iterator[Run]:
    run = Run(podman, image)
    yield run
    run.close()


async def test_the_image_runs_the_appliance_stops_cleanly_and_keeps_its_volume(run: Run) -> None:
    podman = run.podman
    healthcheck = json.loads(podman("image", "inspect", run.image).stdout)[0]["Healthcheck"]
    assert "/readyz" in " ".join(healthcheck["Test"]), healthcheck
    name, server = run.start()

    # Two users chat over WebSocket
    client = Client(server)
    try:
        alice, bob = await client.users(2)
        cid = await client.direct(alice, bob)
        before = (await client.sync(bob))["cursor"]
        a, b = await Socket.open(server, alice), await Socket.open(server, bob)
        await a.send_json(
            {"type": "send", "conversation_id": cid, "body": "hi from a box", "client_msg_id": "m1"}
        )
        sent = await a.until(lambda f: f["type"] == "sent")
        assert (await b.messages(1)) == [sent["message"]]
        await a.close()
        await b.close()
    finally:
        await client.close()

    # tini is PID 1 and reaps orphans; nothing runs as root
    processes = podman.processes(name)
    assert {p["comm"] for p in processes} >= {"tini", "kibitz", "nats-server", "redis-server"}, processes
    assert [p["comm"] for p in processes if p["pid"] == "1"] == ["tini"], processes
    assert {p["user"] for p in processes} == {"kibitz"}, processes
    assert podman("exec", name, "id", "-u").stdout.strip() == UID
    # The admin commands reach the running server from inside, as that user
    assert alice.user["username"] in podman("exec", name, "kibitz", "user", "list").stdout
    podman("exec", name, "sh", "-c", "sleep 0.1 & exit 0")  # the sleep is orphaned to PID 1

    def reaped() -> bool:
        return not any(p["comm"] == "sleep" for p in podman.processes(name))

    poll_until(reaped, 10, "PID 1 reaping an orphan")

    # The HEALTHCHECK passes once ready
    check = podman("healthcheck", "run", name, check=False)
    assert check.returncode == 0, check.stdout + check.stderr

    run.stop(name)

    # An upgrade: a new container on the same volume has the accounts, history and log
    _, server = run.start()
    client = Client(server)
    try:
        history = await client.history(alice, cid)
        assert [m["body"] for m in history["messages"]] == ["hi from a box"]
        events, _ = await client.drain_sync(bob, before)
        assert [e["message"]["id"] for e in events if e["type"] == "message"] == [sent["message"]["id"]]
        b = await Socket.open(server, bob)
        await client.send(alice, cid, "and again after the restart")
        assert [m["body"] for m in await b.messages(1)] == ["and again after the restart"]
        await b.close()
    finally:
        await client.close()
    run.stop(run.containers[-1])
