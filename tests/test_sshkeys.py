"""parse_private_key agrees with ssh-keygen on real keys and refuses everything it cannot use."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, rsa, x25519
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from kiln.domain.sshkeys import MAX_KEY_CHARS, InvalidKey, ParsedKey, parse_private_key

pytestmark = pytest.mark.no_database  # the contract, the sources, key parsing: no server

SSH_KEYGEN = shutil.which("ssh-keygen")


def keygen(path: Path, *args: str, passphrase: str = "") -> Path:
    """Write a new key pair to `path` and `path.pub` with ssh-keygen."""
    if SSH_KEYGEN is None:
        pytest.skip("ssh-keygen is not installed")
    command = [SSH_KEYGEN, "-q", "-N", passphrase, "-C", "kiln-test", "-f", str(path), *args]
    subprocess.run(command, check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return path


def ssh_keygen_fingerprint(path: Path) -> tuple[int, str]:
    """The bits and fingerprint fields of `ssh-keygen -l -f path`."""
    assert SSH_KEYGEN is not None
    out = subprocess.run([SSH_KEYGEN, "-l", "-f", str(path)], check=True, capture_output=True)
    bits, fingerprint = out.stdout.decode().split()[:2]
    return int(bits), fingerprint


def public_key_of(path: Path) -> str:
    """The `.pub` file without its comment."""
    return " ".join(Path(f"{path}.pub").read_text().split()[:2])


RSA, RSA_2048 = ("-t", "rsa", "-b", "3072"), ("-t", "rsa", "-b", "2048")
P256, P384, P521 = (("-t", "ecdsa", "-b", size) for size in ("256", "384", "521"))
PEM, PKCS8 = ("-m", "PEM"), ("-m", "PKCS8")

VALID_KEYS = [
    # ssh-keygen ignores -m for ed25519 and always writes the OpenSSH format.
    pytest.param("ed25519", ("-t", "ed25519"), "OPENSSH PRIVATE KEY", id="ed25519-openssh"),
    pytest.param("rsa", RSA, "OPENSSH PRIVATE KEY", id="rsa-openssh"),
    pytest.param("rsa", RSA + PEM, "RSA PRIVATE KEY", id="rsa-pkcs1"),
    pytest.param("rsa", RSA + PKCS8, "PRIVATE KEY", id="rsa-pkcs8"),
    pytest.param("ecdsa", P256, "OPENSSH PRIVATE KEY", id="p256-openssh"),
    pytest.param("ecdsa", P256 + PEM, "EC PRIVATE KEY", id="p256-sec1"),
    pytest.param("ecdsa", P256 + PKCS8, "PRIVATE KEY", id="p256-pkcs8"),
    pytest.param("ecdsa", P384, "OPENSSH PRIVATE KEY", id="p384-openssh"),
    pytest.param("ecdsa", P384 + PEM, "EC PRIVATE KEY", id="p384-sec1"),
    pytest.param("ecdsa", P384 + PKCS8, "PRIVATE KEY", id="p384-pkcs8"),
    pytest.param("ecdsa", P521, "OPENSSH PRIVATE KEY", id="p521-openssh"),
    pytest.param("ecdsa", P521 + PEM, "EC PRIVATE KEY", id="p521-sec1"),
    pytest.param("ecdsa", P521 + PKCS8, "PRIVATE KEY", id="p521-pkcs8"),
]


@pytest.mark.parametrize(("algorithm", "args", "label"), VALID_KEYS)
def test_agrees_with_ssh_keygen(
    tmp_path: Path, algorithm: str, args: tuple[str, ...], label: str
) -> None:
    path = keygen(tmp_path / "id", *args)
    text = path.read_text()
    assert text.startswith(f"-----BEGIN {label}-----\n")
    bits, fingerprint = ssh_keygen_fingerprint(path)

    assert parse_private_key(text) == ParsedKey(algorithm, bits, fingerprint, public_key_of(path))


@pytest.mark.parametrize("args", [("-t", "ed25519"), RSA + PEM], ids=["openssh", "pkcs1"])
def test_tolerates_crlf_and_surrounding_whitespace(tmp_path: Path, args: tuple[str, ...]) -> None:
    text = keygen(tmp_path / "id", *args).read_text()
    pasted = "\r\n  \t" + text.replace("\n", "\r\n") + "\r\n\r\n "

    assert parse_private_key(pasted) == parse_private_key(text)


def assert_refused(text: str, reason: str) -> None:
    with pytest.raises(InvalidKey, match=reason) as info:
        parse_private_key(text)
    assert str(info.value).endswith(".")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "garbage",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "-----BEGIN OPENSSH PRIVATE KEY-----\nnot base64!\n-----END OPENSSH PRIVATE KEY-----",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
        "-----BEGIN RSA PRIVATE KEY-----\nMAA=\n-----END RSA PRIVATE KEY-----",
        "\x00\x01\x02",
    ],
)
def test_refuses_garbage(text: str) -> None:
    assert_refused(text, "could not be parsed|not an SSH private key")


@pytest.mark.parametrize("text", ["", "   ", "\r\n\t\r\n"])
def test_refuses_empty_text(text: str) -> None:
    assert_refused(text, "empty")


def test_refuses_text_over_64_kib(tmp_path: Path) -> None:
    text = keygen(tmp_path / "id", "-t", "ed25519").read_text()

    assert_refused(text + " " * (MAX_KEY_CHARS - len(text) + 1), "larger than 64 KiB")


@pytest.mark.parametrize("intruder", ["é", "\u00a0", "🔑"])
def test_refuses_non_ascii(tmp_path: Path, intruder: str) -> None:
    text = keygen(tmp_path / "id", "-t", "ed25519").read_text()

    assert_refused(text + intruder, "non-ASCII")


def test_refuses_public_keys_and_certificates(tmp_path: Path) -> None:
    path = keygen(tmp_path / "id", "-t", "ed25519")
    ca = keygen(tmp_path / "ca", "-t", "ed25519")
    assert SSH_KEYGEN is not None
    sign = [SSH_KEYGEN, "-q", "-s", str(ca), "-I", "kiln", "-n", "git", f"{path}.pub"]
    subprocess.run(sign, check=True, capture_output=True)
    public = serialization.load_ssh_public_key(Path(f"{path}.pub").read_bytes())
    pem_public = public.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()

    for text in (Path(f"{path}.pub").read_text(), Path(f"{path}-cert.pub").read_text(), pem_public):
        assert_refused(text, "public key or certificate")


@pytest.mark.parametrize(
    "args",
    [("-t", "ed25519"), RSA_2048 + PEM, RSA_2048 + PKCS8],
    ids=["openssh", "pkcs1", "pkcs8"],
)
def test_refuses_encrypted_keys(tmp_path: Path, args: tuple[str, ...]) -> None:
    text = keygen(tmp_path / "id", *args, passphrase="secret").read_text()

    assert_refused(text, "encrypted")


@pytest.mark.filterwarnings("ignore:SSH DSA keys are deprecated")
@pytest.mark.parametrize("args", [(), PEM, PKCS8], ids=["openssh", "pem", "pkcs8"])
def test_refuses_dsa(tmp_path: Path, args: tuple[str, ...]) -> None:
    try:
        path = keygen(tmp_path / "id", "-t", "dsa", *args)
    except subprocess.CalledProcessError:
        pytest.skip("this ssh-keygen no longer makes DSA keys")

    assert_refused(path.read_text(), "unsupported algorithm")


def _pem(key: PrivateKeyTypes, fmt: serialization.PrivateFormat) -> str:
    return key.private_bytes(serialization.Encoding.PEM, fmt, serialization.NoEncryption()).decode()


PKCS8_FORMAT = serialization.PrivateFormat.PKCS8
OTHER_ALGORITHMS: dict[str, Callable[[], str]] = {
    "ed448": lambda: _pem(ed448.Ed448PrivateKey.generate(), PKCS8_FORMAT),
    "x25519": lambda: _pem(x25519.X25519PrivateKey.generate(), PKCS8_FORMAT),
    "secp256k1": lambda: _pem(
        ec.generate_private_key(ec.SECP256K1()), serialization.PrivateFormat.TraditionalOpenSSL
    ),
}


@pytest.mark.parametrize("make", OTHER_ALGORITHMS.values(), ids=OTHER_ALGORITHMS.keys())
def test_refuses_other_algorithms(make: Callable[[], str]) -> None:
    assert_refused(make(), "unsupported algorithm")


@pytest.mark.parametrize(
    "fmt",
    [
        serialization.PrivateFormat.OpenSSH,
        serialization.PrivateFormat.TraditionalOpenSSL,
        PKCS8_FORMAT,
    ],
    ids=["openssh", "pkcs1", "pkcs8"],
)
def test_refuses_rsa_under_2048_bits(fmt: serialization.PrivateFormat) -> None:
    # Made with cryptography so the test does not depend on ssh-keygen's minimum RSA size.
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505

    assert_refused(_pem(key, fmt), "at least 2048 bits, not 1024")


def test_refuses_rsa_over_8192_bits_before_the_slow_consistency_check() -> None:
    # Made-up numbers that fail the consistency check: only the size check can explain the message.
    p, q = 2**8200 + 1, 2**8200 + 3
    numbers = rsa.RSAPrivateNumbers(p, q, 3, 3, 3, 3, rsa.RSAPublicNumbers(65537, p * q))
    key = numbers.private_key(unsafe_skip_rsa_key_validation=True)

    assert_refused(_pem(key, PKCS8_FORMAT), "at most 8192 bits, not 16401")


@pytest.mark.parametrize(
    "args",
    [("-t", "ed25519"), RSA_2048, RSA_2048 + PEM, P256 + PEM, P384 + PKCS8],
    ids=["ed25519-openssh", "rsa-openssh", "rsa-pkcs1", "p256-sec1", "p384-pkcs8"],
)
def test_damaged_keys_raise_only_invalid_key(tmp_path: Path, args: tuple[str, ...]) -> None:
    text = keygen(tmp_path / "id", *args).read_text()

    for i in range(0, len(text), len(text) // 60):
        for damaged in (text[:i], text[:i] + "B" + text[i + 1 :], text[:i] + text[i + 1 :]):
            with contextlib.suppress(InvalidKey):
                parse_private_key(damaged)
