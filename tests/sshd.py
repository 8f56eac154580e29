"""A real OpenSSH server for the ssh driver's tests, on 127.0.0.1 and a free port.

Each test process (each pytest-xdist worker) starts its own `sshd -D -e` with a host key
and an authorized key made for it, so that parallel sessions never share a server. Run
as root (as CI does), it logs in a dedicated unprivileged user, `kiln-ssh-test`, made on
first use; otherwise it can only log in the user running the tests, with their own home.

Without /usr/sbin/sshd the tests fail, saying so; they are never skipped (`.ci/run`
installs OpenSSH's server).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import free_port, wait_until

SSHD = Path("/usr/sbin/sshd")
TEST_USER = "kiln-ssh-test"
USER_LOCK = Path(tempfile.gettempdir()) / "kiln-ssh-test-user.lock"
PRIVILEGE_SEPARATION_DIR = Path("/run/sshd")
START_ATTEMPTS = 5  # each on a new free port, in case another process took the last one


@dataclass(frozen=True)
class Sshd:
    port: int
    user: str
    home: Path  # the login user's home directory
    uid: int
    gid: int
    host_key: str  # the public host key line, "ssh-ed25519 AAAA... comment"
    login_key: str  # the login user's authorized private key, OpenSSH format
    log: Path  # sshd's own messages (-e), for when a test needs to know why

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def give(self, path: Path) -> None:
        """Make `path` (and everything below it) the login user's."""
        if os.geteuid() != 0:
            return
        for parent, directories, files in os.walk(path):
            for name in [*directories, *files]:
                os.lchown(os.path.join(parent, name), self.uid, self.gid)
        os.lchown(path, self.uid, self.gid)


def sshd_available() -> None:
    """Fail, saying so, when there is no OpenSSH server to test with: never skipped."""
    if SSHD.exists() and shutil.which("ssh-keygen"):
        return
    pytest.fail(f"{SSHD} or ssh-keygen is missing: install openssh-server (.ci/run does)")


def keygen(path: Path, comment: str) -> tuple[str, str]:
    """A new ed25519 key pair at `path`: (private key text, public key line)."""
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        stdin=subprocess.DEVNULL,
    )
    return path.read_text(), path.with_suffix(".pub").read_text().strip()


def login_user() -> pwd.struct_passwd:
    """The user sshd logs in: a dedicated one under root, else the current user."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid())
    # Several test processes may get here at once: one of them makes the user.
    with USER_LOCK.open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(TEST_USER)
        # `*` rather than useradd's `!`: without PAM, sshd refuses a locked account.
        useradd = ["useradd", "--system", "--create-home", "--shell", "/bin/bash"]
        subprocess.run(
            [*useradd, "--password", "*", TEST_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(TEST_USER)


def sshd_config(directory: Path, keys_dir: Path, port: int, user: str) -> str:
    return f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {directory / "host_key"}
PidFile none
UsePAM no
StrictModes no
AuthorizedKeysFile {keys_dir / "authorized_keys"}
AllowUsers {user}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitUserEnvironment no
AllowTcpForwarding no
X11Forwarding no
PrintMotd no
Subsystem sftp internal-sftp
MaxSessions 100
MaxStartups 100:30:200
LogLevel VERBOSE
"""


def answers_ssh(port: int) -> bool:
    """Whether an SSH server answers on the port (sends its version line)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            return sock.recv(4).startswith(b"SSH-")
    except OSError:
        return False


@contextlib.contextmanager
def running_sshd(directory: Path) -> Iterator[Sshd]:
    user = login_user()
    host_key = keygen(directory / "host_key", "kiln-test-host")[1]
    login_key, authorized = keygen(directory / "login_key", "kiln-test-login")
    # The authorized keys are read as the login user, who cannot enter pytest's 0700
    # temporary directories: they live in a directory of their own, readable by all.
    keys_dir = Path(tempfile.mkdtemp(prefix="kiln-sshd-keys-"))
    try:
        keys_dir.chmod(0o755)
        (keys_dir / "authorized_keys").write_text(authorized + "\n")
        (keys_dir / "authorized_keys").chmod(0o644)
        if os.geteuid() == 0:
            PRIVILEGE_SEPARATION_DIR.mkdir(mode=0o755, exist_ok=True)
        sshd = Sshd(
            port=0,
            user=user.pw_name,
            home=Path(user.pw_dir),
            uid=user.pw_uid,
            gid=user.pw_gid,
            host_key=host_key,
            login_key=login_key,
            log=directory / "sshd.log",
        )
        with started(sshd, directory, keys_dir) as serving:
            yield serving
    finally:
        shutil.rmtree(keys_dir, ignore_errors=True)


@contextlib.contextmanager
def started(sshd: Sshd, directory: Path, keys_dir: Path) -> Iterator[Sshd]:
    for _ in range(START_ATTEMPTS):
        port = free_port()
        config = directory / "sshd_config"
        config.write_text(sshd_config(directory, keys_dir, port, sshd.user))
        with sshd.log.open("ab") as log:
            process = subprocess.Popen(
                [str(SSHD), "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        try:
            wait_until(
                lambda: process.poll() is not None or answers_ssh(port),  # noqa: B023
                what=f"sshd to answer on port {port}",
            )
            if process.poll() is None:
                yield dataclasses.replace(sshd, port=port)
                return
        finally:
            stop(process)
    raise AssertionError(f"sshd did not start; see {sshd.log}:\n{sshd.log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Named so that a test module imports `sshd_fixture` and its tests take `sshd`.
@pytest.fixture(scope="session", name="sshd")
def sshd_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sshd]:
    sshd_available()
    with running_sshd(tmp_path_factory.mktemp("sshd")) as serving:
        yield serving


@pytest.fixture(name="remote_tmp")
def remote_tmp_fixture(sshd: Sshd) -> Iterator[Path]:
    """A directory of the login user's, on the "remote" machine (this one)."""
    path = Path(tempfile.mkdtemp(prefix="kiln-ssh-remote-"))
    try:
        sshd.give(path)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
