"""Parse the SSH private keys users upload, so Kiln can refuse unusable ones and show fingerprints.

Only unencrypted RSA (2048 to 8192 bits), ECDSA (P-256, P-384, P-521) and Ed25519 keys are
accepted, in OpenSSH or PEM (PKCS#1, SEC1, PKCS#8) format. Anything else raises `InvalidKey`.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

MAX_KEY_CHARS = 64 * 1024
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192  # checking a key costs ~4 s of CPU at this size; OpenSSH itself allows 16384
_CURVES = (ec.SECP256R1, ec.SECP384R1, ec.SECP521R1)
_OPENSSH_HEADER = b"-----BEGIN OPENSSH PRIVATE KEY-----"
_PEM_HEADERS = frozenset(
    {
        b"-----BEGIN RSA PRIVATE KEY-----",  # PKCS#1
        b"-----BEGIN EC PRIVATE KEY-----",  # SEC1
        b"-----BEGIN PRIVATE KEY-----",  # PKCS#8
    }
)


class InvalidKey(ValueError):
    """The text is not a private key Kiln can use; str(exc) says why, in one short sentence."""


@dataclass(frozen=True)
class ParsedKey:
    algorithm: str  # "ed25519", "rsa" or "ecdsa"
    bits: int
    fingerprint: str  # as `ssh-keygen -l` prints it: "SHA256:" + unpadded base64
    public_key: str  # OpenSSH one-line public key, without a comment


def parse_private_key(text: str) -> ParsedKey:
    """Parse an unencrypted SSH private key, or raise `InvalidKey` saying why it is unusable."""
    if len(text) > MAX_KEY_CHARS:
        raise InvalidKey("The key is larger than 64 KiB.")
    if not text.isascii():
        raise InvalidKey("The key contains non-ASCII characters.")
    data = text.strip().replace("\r\n", "\n").encode("ascii")
    if not data:
        raise InvalidKey("The key is empty.")
    first_line = data.split(b"\n", 1)[0].strip()
    openssh = first_line == _OPENSSH_HEADER
    if not openssh and first_line not in _PEM_HEADERS:
        raise InvalidKey(_not_a_private_key(first_line))
    key = _load(data, openssh, validate=False)
    if isinstance(key, rsa.RSAPrivateKey):
        bits = key.key_size
        if bits < MIN_RSA_BITS:
            raise InvalidKey(f"RSA keys must have at least {MIN_RSA_BITS} bits, not {bits}.")
        if bits > MAX_RSA_BITS:
            raise InvalidKey(f"RSA keys must have at most {MAX_RSA_BITS} bits, not {bits}.")
        # Check that the private and public halves agree only now: for big keys it takes seconds.
        key = _load(data, openssh, validate=True)
    return _describe(key)


def _load(data: bytes, openssh: bool, validate: bool) -> PrivateKeyTypes:
    skip = not validate
    try:
        if openssh:
            return serialization.load_ssh_private_key(
                data, None, unsafe_skip_rsa_key_validation=skip
            )
        return serialization.load_pem_private_key(data, None, unsafe_skip_rsa_key_validation=skip)
    except TypeError as exc:  # cryptography's way of saying a password is needed
        raise InvalidKey("The key is encrypted; upload it without a passphrase.") from exc
    except UnsupportedAlgorithm as exc:
        raise InvalidKey("The key uses an unsupported algorithm.") from exc
    except Exception as exc:  # malformed input can surface as several exception types
        raise InvalidKey("The key could not be parsed.") from exc


def _not_a_private_key(first_line: bytes) -> str:
    if b"ENCRYPTED" in first_line:
        return "The key is encrypted; upload it without a passphrase."
    if b"PUBLIC KEY" in first_line or b"CERTIFICATE" in first_line or b" AAAA" in first_line:
        return "This is a public key or certificate, not a private key."
    if first_line.startswith(b"-----BEGIN ") and first_line.endswith(b" PRIVATE KEY-----"):
        return "The key uses an unsupported algorithm."
    return "The text is not an SSH private key in OpenSSH or PEM format."


def _describe(key: PrivateKeyTypes) -> ParsedKey:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        algorithm, bits = "ed25519", 256
    elif isinstance(key, rsa.RSAPrivateKey):
        algorithm, bits = "rsa", key.key_size
    elif isinstance(key, ec.EllipticCurvePrivateKey) and isinstance(key.curve, _CURVES):
        algorithm, bits = "ecdsa", key.curve.key_size
    else:
        raise InvalidKey("The key uses an unsupported algorithm.")
    public_key = (
        key.public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode("ascii")
    )
    blob = base64.b64decode(public_key.split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return ParsedKey(algorithm, bits, "SHA256:" + digest, public_key)
