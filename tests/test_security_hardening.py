"""Fixes from the security review, each test named after the attack it stops: a
collaborator taking over the owner's namespace, webhooks aimed at internal addresses
(spelled as IPv6 or in other digits, or by a name that rebinds), a data directory
others can read, and secrets kept by caches or docs framed by other sites."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
import re
import ssl
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kiln.background import deliveries
from kiln.core import spec
from kiln.domain import webhook_targets
from tests.support import (
    Account,
    RunningServer,
    add_collaborator,
    fresh_database,
    isolated_database,
    make_account,
    server_settings,
    wait_for_build,
    wait_until,
)

NS = "/api/v1/namespaces"


# -- 5: a collaborator manages what is in a namespace, not the namespace itself ----------


@pytest.fixture
def shared(client: httpx.Client, database_url: str, alice: Account, bob: Account) -> dict[str, Any]:
    """Alice's private namespace, which Bob collaborates in."""
    made = client.post(NS, json={"name": "alices"}, headers=alice.auth)
    assert made.status_code == 201, made.text
    body: dict[str, Any] = made.json()
    add_collaborator(database_url, body["id"], bob.id)
    return body


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("PATCH", {"visibility": "public"}),
        ("PATCH", {"visibility": "internal"}),
        ("PUT", {"name": "alices", "visibility": "public"}),
    ],
)
def test_a_collaborator_cannot_publish_the_owners_namespace(
    client: httpx.Client,
    alice: Account,
    bob: Account,
    shared: dict[str, Any],
    method: str,
    body: dict[str, Any],
) -> None:
    url = f"{NS}/{shared['id']}"
    refused = client.request(method, url, json=body, headers=bob.auth)
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "permission_denied"
    assert client.get(url, headers=alice.auth).json()["visibility"] == "private"
    assert client.get(url).status_code == 404  # still not visible to anyone


@pytest.mark.parametrize(
    ("method", "body"),
    [
        ("PATCH", {"name": "hijacked"}),
        ("PUT", {"name": "hijacked", "visibility": "private"}),
    ],
)
def test_a_collaborator_cannot_rename_the_owners_namespace(
    client: httpx.Client,
    alice: Account,
    bob: Account,
    shared: dict[str, Any],
    method: str,
    body: dict[str, Any],
) -> None:
    child = client.post(NS, json={"name": "kid", "parent_id": shared["id"]}, headers=alice.auth)
    assert child.status_code == 201, child.text
    refused = client.request(method, f"{NS}/{shared['id']}", json=body, headers=bob.auth)
    assert refused.status_code == 403, refused.text
    assert refused.json()["code"] == "permission_denied"
    # Nor through a namespace below it, where Bob's grant is inherited.
    below = client.request(method, f"{NS}/{child.json()['id']}", json=body, headers=bob.auth)
    assert below.status_code == 403, below.text
    assert client.get(f"{NS}/{shared['id']}", headers=alice.auth).json()["path"] == shared["path"]
    kid = client.get(f"{NS}/{child.json()['id']}", headers=alice.auth).json()
    assert kid["path"] == f"{shared['path']}/kid"


def test_a_collaborator_still_manages_the_description_and_the_owner_everything(
    client: httpx.Client, alice: Account, bob: Account, shared: dict[str, Any]
) -> None:
    url = f"{NS}/{shared['id']}"
    described = client.patch(url, json={"description": "for the team"}, headers=bob.auth)
    assert described.status_code == 200, described.text
    # A PUT that sends the name and visibility back unchanged changes neither.
    replaced = client.put(
        url, json={"name": "alices", "visibility": "private", "description": "x"}, headers=bob.auth
    )
    assert replaced.status_code == 200, replaced.text
    published = client.patch(url, json={"visibility": "public", "name": "ours"}, headers=alice.auth)
    assert published.status_code == 200, published.text
    assert (published.json()["visibility"], published.json()["name"]) == ("public", "ours")


# -- 12: webhooks never reach internal addresses ------------------------------------------


def hooks(namespace: dict[str, Any]) -> str:
    return f"{NS}/{namespace['id']}/webhooks"


@pytest.fixture
def hooked(client: httpx.Client, alice: Account) -> dict[str, Any]:
    made: dict[str, Any] = client.post(NS, json={"name": "hooked"}, headers=alice.auth).json()
    return made


def _local_nat64(v4: str) -> str:
    """The address of `v4` under the local-use NAT64 prefix 64:ff9b:1::/48 (RFC 6052)."""
    packed = bytearray(ipaddress.IPv6Address("64:ff9b:1::").packed)
    four = ipaddress.IPv4Address(v4).packed
    packed[6:8], packed[9:11] = four[:2], four[2:]
    return str(ipaddress.IPv6Address(bytes(packed)))


def _teredo(server: str, client: str) -> str:
    """A Teredo address (2001::/32) for a client behind `client`, which it stores inverted."""
    value = (0x2001_0000 << 96) | (int(ipaddress.IPv4Address(server)) << 64)
    value |= int(ipaddress.IPv4Address(client)) ^ 0xFFFF_FFFF
    return str(ipaddress.IPv6Address(value))


def assert_refused_as_target(
    client: httpx.Client, alice: Account, hooked: dict[str, Any], host: str
) -> None:
    response = client.post(
        hooks(hooked),
        json={"payload_url": f"https://{host}/hook", "events": ["build.finished"]},
        headers=alice.auth,
    )
    assert response.status_code == 422, response.text
    assert response.json()["errors"][0]["pointer"] == "/payload_url"


@pytest.mark.parametrize(
    "host",
    [
        "[::127.0.0.1]",  # IPv4-compatible
        "[::ffff:10.0.0.1]",  # IPv4-mapped
        "[64:ff9b::7f00:1]",  # NAT64 of loopback
        "[64:ff9b::a9fe:a9fe]",  # NAT64 of the cloud metadata address
        f"[{_local_nat64('127.0.0.1')}]",  # local-use NAT64
        "[2002:7f00:1::]",  # 6to4 of loopback
        "[2002:c0a8:101::1]",  # 6to4 of 192.168.1.1
        f"[{_teredo('65.54.227.120', '127.0.0.1')}]",  # Teredo, client on loopback
        "[::]",
        "[fec0::1]",  # site-local
    ],
)
def test_ssrf_through_ipv6_forms_of_internal_ipv4_is_refused(
    client: httpx.Client, alice: Account, hooked: dict[str, Any], host: str
) -> None:
    assert_refused_as_target(client, alice, hooked, host)


@pytest.mark.parametrize(
    "host",
    [
        "\uff18.\uff18.\uff18.\uff18",  # 8.8.8.8 in fullwidth digits
        "\uff11\uff12\uff17.\uff10.\uff10.\uff11",  # 127.0.0.1 in fullwidth digits
        "127\u30020\u30020\u30021",  # ideographic full stops, which IDNA reads as dots
        "127\uff0e0\uff0e0\uff0e1",  # fullwidth full stops
        "%31%32%37.0.0.1",
    ],
)
def test_ssrf_through_addresses_in_other_digits_is_refused(
    client: httpx.Client, alice: Account, hooked: dict[str, Any], host: str
) -> None:
    assert_refused_as_target(client, alice, hooked, host)


@pytest.mark.parametrize(
    "host",
    [
        "[64:ff9b::5db8:d822]",  # NAT64 of 93.184.216.34, as DNS64 answers on IPv6-only networks
        "[2002:5db8:d822::1]",
        "[2606:4700:4700::1111]",
    ],
)
def test_public_addresses_stay_allowed_in_every_form(
    client: httpx.Client, alice: Account, hooked: dict[str, Any], host: str
) -> None:
    response = client.post(
        hooks(hooked),
        json={"payload_url": f"https://{host}/hook", "events": ["build.finished"]},
        headers=alice.auth,
    )
    assert response.status_code == 201, response.text


@dataclass
class Seen:
    path: str
    host: str
    sni: str | None


@dataclass
class Receiver:
    """An HTTP(S) server on 127.0.0.1 that answers 200 and keeps what it was sent."""

    tls: ssl.SSLContext | None = None
    requests: list[Seen] = field(default_factory=list)
    names: list[str | None] = field(default_factory=list)  # SNI of each TLS handshake

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length", "0")))
                sni = receiver.names[-1] if receiver.names else None
                receiver.requests.append(Seen(self.path, self.headers.get("Host", ""), sni))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if self.tls is not None:
            self.tls.sni_callback = lambda _socket, name, _context: self.names.append(name)
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    @property
    def port(self) -> int:
        port: int = self.server.server_address[1]
        return port

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(tls: ssl.SSLContext | None = None) -> Receiver:
        made.append(Receiver(tls))
        return made[-1]

    yield make
    for receiver in made:
        receiver.close()


@pytest.fixture
def dns(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Names only Kiln's webhook checks resolve, to the addresses the test puts here (the
    system resolves none of them: `.invalid`). Every other name resolves as usual."""
    zone: dict[str, list[str]] = {}
    real = webhook_targets.lookup

    async def lookup(host: str, port: int) -> list[webhook_targets.IPAddress]:
        if host in zone:
            return [ipaddress.ip_address(a) for a in zone[host]]
        return await real(host, port)

    monkeypatch.setattr(webhook_targets, "lookup", lookup)
    return zone


class Authority:
    """A certificate authority of the test's own, and certificates it issues."""

    NAME = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kiln test authority")])

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = (
            self._builder(self.NAME, self.key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(self.key, hashes.SHA256())
        )

    @property
    def pem(self) -> str:
        return self.cert.public_bytes(serialization.Encoding.PEM).decode()

    def _builder(self, subject: x509.Name, public_key: Any) -> x509.CertificateBuilder:
        now = dt.datetime.now(dt.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.NAME)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )

    def server_context(self, name: str, directory: Path) -> ssl.SSLContext:
        """A TLS server context presenting a certificate for `name` alone."""
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        cert = (
            self._builder(subject, key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        cert_file, key_file = directory / f"{name}.pem", directory / f"{name}.key"
        cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert_file, key_file)
        return context


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority()


@dataclass
class Kiln:
    client: httpx.Client
    owner: Account
    namespace: dict[str, Any]

    def webhook(self, url: str) -> httpx.Response:
        return self.client.post(
            hooks(self.namespace),
            json={"payload_url": url, "events": ["invite.sent"]},
            headers=self.owner.auth,
        )

    def delivered(self, hook: dict[str, Any]) -> dict[str, Any]:
        """Ping the webhook and return the delivery once it is delivered or has failed."""
        pinged = self.client.post(hook["_links"]["pings"]["href"], headers=self.owner.auth)
        assert pinged.status_code == 202, pinged.text
        href = pinged.json()["_links"]["self"]["href"]

        def done() -> dict[str, Any] | None:
            body: dict[str, Any] = self.client.get(href, headers=self.owner.auth).json()
            return body if body["status"] != "pending" else None

        return wait_until(done, what=f"the delivery at {href}")


def _kiln(
    database_url: str, tmp: pytest.TempPathFactory, name: str, **settings: Any
) -> Iterator[Kiln]:
    url = isolated_database(database_url, tmp.mktemp(f"{name}-db"), name)
    configured = server_settings(
        tmp.mktemp(name),
        url,
        webhooks_allow_http=True,
        webhook_retry_seconds=0.05,
        webhook_timeout_seconds=5.0,
        workers=0,
        scheduler=False,
        **settings,
    )
    with RunningServer(configured) as server, server.client() as client:
        owner = make_account(url, prefix="hooker")
        namespace = client.post(NS, json={"name": "watched"}, headers=owner.auth)
        assert namespace.status_code == 201, namespace.text
        yield Kiln(client, owner, namespace.json())


@pytest.fixture(scope="module")
def guarded_kiln(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kiln]:
    """A Kiln that refuses private addresses, as servers do by default."""
    yield from _kiln(database_url, tmp_path_factory, "guarded")


@pytest.fixture(scope="module")
def lan_kiln(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, authority: Authority
) -> Iterator[Kiln]:
    """A Kiln that may call loopback (`--webhooks-allow-private`) and trusts the test's
    certificate authority."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            deliveries, "tls_context", lambda: ssl.create_default_context(cadata=authority.pem)
        )
        yield from _kiln(database_url, tmp_path_factory, "lan", webhooks_allow_private=True)


def test_dns_rebinding_to_loopback_after_the_check_at_creation_is_refused_at_delivery(
    guarded_kiln: Kiln, dns: dict[str, list[str]], receivers: Callable[..., Receiver]
) -> None:
    inside = receivers()
    dns["rebinding.invalid"] = ["93.184.216.34"]
    made = guarded_kiln.webhook(f"http://rebinding.invalid:{inside.port}/hook")
    assert made.status_code == 201, made.text

    dns["rebinding.invalid"] = ["127.0.0.1"]
    done = guarded_kiln.delivered(made.json())
    assert done["status"] == "failed"
    [attempt] = done["attempts"]
    assert attempt["response_code"] is None
    assert "127.0.0.1, which is not a public address" in attempt["error"]
    assert inside.requests == []


def test_dns_rebinding_between_check_and_connect_cannot_redirect_a_delivery(
    lan_kiln: Kiln, dns: dict[str, list[str]], receivers: Callable[..., Receiver]
) -> None:
    """The delivery connects to the address the check resolved: the system resolver
    knows nothing of the name, so a second lookup (httpx's own) would fail."""
    checked = receivers()
    dns["pinned.invalid"] = ["127.0.0.1"]
    made = lan_kiln.webhook(f"http://pinned.invalid:{checked.port}/hook")
    assert made.status_code == 201, made.text

    done = lan_kiln.delivered(made.json())
    assert done["status"] == "delivered", done
    [seen] = checked.requests
    assert (seen.path, seen.host) == ("/hook", f"pinned.invalid:{checked.port}")


def test_a_pinned_https_delivery_cannot_be_served_by_a_certificate_for_another_name(
    lan_kiln: Kiln,
    dns: dict[str, list[str]],
    receivers: Callable[..., Receiver],
    authority: Authority,
    tmp_path: Path,
) -> None:
    """Connected to the checked address, TLS still names the URL's host (SNI) and
    verifies the certificate against it, not against the address."""
    receiver = receivers(authority.server_context("hooks.invalid", tmp_path))
    dns["hooks.invalid"] = dns["impostor.invalid"] = ["127.0.0.1"]

    genuine = lan_kiln.webhook(f"https://hooks.invalid:{receiver.port}/hook")
    assert genuine.status_code == 201, genuine.text
    assert lan_kiln.delivered(genuine.json())["status"] == "delivered"
    [seen] = receiver.requests
    assert (seen.host, seen.sni) == (f"hooks.invalid:{receiver.port}", "hooks.invalid")

    impostor = lan_kiln.webhook(f"https://impostor.invalid:{receiver.port}/hook")
    assert impostor.status_code == 201, impostor.text
    refused = lan_kiln.delivered(impostor.json())
    assert refused["status"] == "failed"
    assert all("certificate" in a["error"].lower() for a in refused["attempts"]), refused
    assert len(receiver.requests) == 1


# -- 14: other local users cannot read the data directory --------------------------------


@pytest.fixture
def loose_umask() -> Iterator[None]:
    """The common umask (022), under which files are world-readable unless Kiln says not."""
    before = os.umask(0o022)
    yield
    os.umask(before)


ARTIFACT_BUILD = """driver: {type: local}
stages: [make]
jobs:
- stage: make
  commands: [echo secret output, echo made > made.txt]
  artifacts: [made.txt]
"""


def test_other_local_users_cannot_read_the_data_directory(
    tmp_path: Path, loose_umask: None
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)  # as a data directory made before Kiln started would be
    url = fresh_database(None, data_dir)  # kiln.db, made by the migration
    settings = server_settings(data_dir, url, workers=1, scheduler=False)
    with RunningServer(settings) as server, server.client() as client:
        who = make_account(url)
        uploaded = client.post(
            "/api/v1/objects",
            params={"name": "o.bin"},
            content=b"object bytes",
            headers={**who.auth, "Content-Type": "application/octet-stream"},
        )
        assert uploaded.status_code == 201, uploaded.text
        submitted = client.post(
            "/api/v1/builds", json={"manifest": ARTIFACT_BUILD}, headers=who.auth
        )
        assert submitted.status_code == 202, submitted.text
        assert wait_for_build(client, who.auth, submitted.json()["id"])["status"] == "passed"

        def mode(path: Path) -> int:
            return stat.S_IMODE(path.stat().st_mode)

        assert mode(data_dir) == 0o700
        for name in ("kiln.db", "secret.key", "cert.pem", "key.pem"):
            assert mode(data_dir / name) == 0o600, name
        written = [p for p in data_dir.glob("kiln.db-*")] + list((data_dir / "blobs").rglob("*"))
        files = [p for p in written if p.is_file()]
        assert {"o.bin", "made.txt", "output"} <= _kinds(files)
        assert {str(p): oct(mode(p)) for p in files if mode(p) != 0o600} == {}
        directories = [p for p in written if p.is_dir()]
        assert {str(p): oct(mode(p)) for p in directories if mode(p) != 0o700} == {}


def _kinds(files: list[Path]) -> set[str]:
    """Which of the object's, the artifact's and the job output's files are among `files`."""
    found = {"output"} if any(p.suffix == ".log" for p in files) else set()
    contents = {p.read_bytes() for p in files if p.suffix != ".log" and "blobs" in p.parts}
    if b"object bytes" in contents:
        found.add("o.bin")
    if b"made\n" in contents:
        found.add("made.txt")
    return found


# -- 16: secrets are not kept by caches; the docs are not framed -------------------------


def test_a_new_token_is_not_kept_by_caches(client: httpx.Client, alice: Account) -> None:
    headers = {**alice.auth, "Idempotency-Key": "token-once"}
    body = {"name": "ci", "scopes": ["build:read"]}
    created = client.post("/api/v1/tokens", json=body, headers=headers)
    assert created.status_code == 201, created.text
    assert created.headers["cache-control"] == "no-store"
    replayed = client.post("/api/v1/tokens", json=body, headers=headers)
    assert replayed.status_code == 200, replayed.text
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.json()["token"] == created.json()["token"]
    assert replayed.headers["cache-control"] == "no-store"
    # Only what carries a secret: reading the token again shows none, and may be cached.
    again = client.get(created.headers["location"], headers=alice.auth)
    assert "cache-control" not in again.headers


SECRET_FIELDS = {"token", "secret", "client_secret", "private_key", "password"}


def _properties(document: dict[str, Any], schema: Any) -> dict[str, Any]:
    schema = spec.resolve(document, schema)
    found: dict[str, Any] = dict(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        found.update(_properties(document, part))
    return found


def test_every_response_that_carries_a_secret_forbids_caches_in_the_contract() -> None:
    """So that the next operation that shows a secret cannot forget `no-store`: hal sends
    it wherever the contract declares it."""
    document = spec.load()
    carrying: list[str] = []
    for op in spec.operations().values():
        operation = document["paths"][op.path][op.method.lower()]
        for status, response in operation["responses"].items():
            response = spec.resolve(document, response)
            for media in response.get("content", {}).values():
                shown = {
                    name
                    for name, prop in _properties(document, media.get("schema", {})).items()
                    if name in SECRET_FIELDS
                    and not spec.resolve(document, prop).get("writeOnly", False)
                    and spec.resolve(document, prop).get("type") == "string"
                }
                if shown:
                    carrying.append(f"{op.operation_id} {status}")
                    header = spec.resolve(
                        document, response.get("headers", {}).get("Cache-Control")
                    )
                    assert header is not None, f"{op.operation_id} {status} shows {shown}"
                    assert header["required"] is True
                    assert header["schema"]["enum"] == ["no-store"]
    assert "createToken 201" in carrying
    assert "createToken 200" in carrying


def _csp(response: httpx.Response) -> dict[str, list[str]]:
    directives = (d.split() for d in response.headers["content-security-policy"].split(";"))
    return {d[0]: d[1:] for d in directives if d}


def test_the_docs_cannot_be_framed_for_clickjacking(client: httpx.Client) -> None:
    for path in ("/docs/", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["x-frame-options"] == "DENY"
        assert _csp(response)["frame-ancestors"] == ["'none'"]


def test_the_docs_run_only_the_scripts_kiln_serves(client: httpx.Client) -> None:
    """Swagger UI still works under the policy: its inline start-up script is allowed
    by hash, everything it loads comes from Kiln, and nothing else may run."""
    page = client.get("/docs/")
    policy = _csp(page)
    scripts = policy["script-src"]
    assert "'unsafe-inline'" not in scripts
    assert "'unsafe-eval'" not in scripts
    assert policy["default-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"]  # the contract, and "Try it out"
    inline = re.findall(r"<script>(.*?)</script>", page.text, re.DOTALL)
    assert inline, "Swagger UI starts from an inline script"
    assert scripts == ["'self'", *(f"'sha256-{_digest(s)}'" for s in inline)]
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) >= 3
    for asset in assets:
        url = page.url.join(asset)
        assert (url.scheme, url.netloc) == (page.url.scheme, page.url.netloc), asset
        loaded = client.get(url)
        assert loaded.status_code == 200, asset
        assert loaded.headers["x-frame-options"] == "DENY"
    spec_url = re.search(r'url: "([^"]+)"', page.text)
    assert spec_url is not None
    fetched = page.url.join(spec_url.group(1))
    assert fetched.netloc == page.url.netloc
    assert client.get(fetched).status_code == 200


def _digest(script: str) -> str:
    return base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
