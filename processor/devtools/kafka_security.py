"""Transport security of the local Kafka: TLS certificates, SCRAM users, the authorizer.

`BrokerSecurity` turns a local cluster's client listener into SASL_SSL:

* a certificate authority and a broker certificate for `127.0.0.1` and `localhost`, made
  with the `cryptography` package, written as PEM files (Kafka reads PEM key stores and
  trust stores, `ssl.keystore.type=PEM`; librdkafka's `ssl.ca.location` reads the CA);
  a second, unrelated CA (`untrusted_ca`) lets tests show that a client trusting the
  wrong authority is refused. A directory that holds them already keeps them
  (`ensure_certificates`): only what is missing, expires within a day or no longer fits
  is made again, so clients that trust the CA keep trusting it;
* SCRAM-SHA-512 users, created when the storage is formatted (`--add-scram`): `broker`
  (the nodes among themselves), `admin`, and any others asked for. Their passwords are
  kept in `scram-users.yaml` (mode 0600) and read again at the next start, so the client
  files stay valid. No password is ever on a command line: the storage tool gets its
  arguments from a Java argument file (`java @FILE`, mode 0600, removed once the
  storage is formatted; see `processor.devtools.local_kafka`);
* the `StandardAuthorizer`, `broker` and `admin` as super users, and no access for anyone
  else without an ACL (`allow.everyone.if.no.acl.found=false`).

The controller listener (nodes to their controllers) is SASL_SSL too, with the PLAIN
mechanism and the broker's password in the configuration: SCRAM credentials live in the
cluster metadata, which the controllers serve, so they cannot authenticate the
controllers' own connections.

    security = BrokerSecurity.create(directory, users={"orders": "orders-secret"})
    with LocalKafka(security=security) as kafka:
        settings = security.client_settings("orders")   # librdkafka settings
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import yaml
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._acl import AclBinding, AclOperation, AclPermissionType
from confluent_kafka.admin._resource import ResourcePatternType, ResourceType
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from processor.core.errors import ConfigError

BROKER_USER: Final = "broker"
ADMIN_USER: Final = "admin"
MECHANISM: Final = "SCRAM-SHA-512"
AUTHORIZER: Final = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
LISTENER: Final = "SECURE"
"""The name of the SASL_SSL client (and inter-broker) listener."""

CA_FILE: Final = "ca.pem"
CA_KEY_FILE: Final = "ca-key.pem"
UNTRUSTED_CA_FILE: Final = "untrusted-ca.pem"
BROKER_KEYSTORE_FILE: Final = "broker-keystore.pem"
USERS_FILE: Final = "scram-users.yaml"
VALID_DAYS: Final = 30
RENEW_BEFORE: Final = datetime.timedelta(days=1)
"""A certificate that expires sooner than this is made again at the next start."""


@dataclass(frozen=True)
class Certificates:
    """The PEM files: the trusted CA, the broker's key store, an unrelated CA."""

    ca: Path
    broker_keystore: Path
    """The broker's private key (PKCS#8, not encrypted: readable by its owner only) and
    its certificate chain, in one PEM file (Kafka's `ssl.keystore.type=PEM`)."""
    untrusted_ca: Path


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "processor local Kafka"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _authority(common_name: str, now: datetime.datetime
               ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=True, crl_sign=True,
            content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, certificate


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _write_private(path: Path, data: bytes) -> None:
    """Write `data` to a new file readable by its owner only."""
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    path.write_bytes(data)


def _broker_certificate(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate,
                        hosts: tuple[str, ...], addresses: tuple[str, ...],
                        now: datetime.datetime
                        ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(h) for h in hosts]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(hosts[0] if hosts else addresses[0]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                              ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return key, certificate


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _files(directory: Path) -> Certificates:
    return Certificates(directory / CA_FILE, directory / BROKER_KEYSTORE_FILE,
                        directory / UNTRUSTED_CA_FILE)


def generate_certificates(directory: Path, hosts: tuple[str, ...] = ("localhost",),
                          addresses: tuple[str, ...] = ("127.0.0.1",), *,
                          now: datetime.datetime | None = None) -> Certificates:
    """A new CA (its key in `ca-key.pem`, mode 0600), a broker certificate it signs
    (valid for `hosts` and `addresses`, for servers and clients both, since the nodes
    connect to each other), and an unrelated CA, written into `directory` (created if
    needed), replacing what is there."""
    directory.mkdir(parents=True, exist_ok=True)
    now = now or datetime.datetime.now(datetime.UTC)
    ca_key, ca_cert = _authority("processor local Kafka CA", now)
    _, other_cert = _authority("processor untrusted CA", now)
    files = _files(directory)
    _write_private(directory / CA_KEY_FILE, _private_pem(ca_key))
    files.ca.write_bytes(_pem(ca_cert))
    files.untrusted_ca.write_bytes(_pem(other_cert))
    _write_keystore(files, ca_key, ca_cert, hosts, addresses, now)
    return files


def _write_keystore(files: Certificates, ca_key: ec.EllipticCurvePrivateKey,
                    ca_cert: x509.Certificate, hosts: tuple[str, ...],
                    addresses: tuple[str, ...], now: datetime.datetime) -> None:
    key, certificate = _broker_certificate(ca_key, ca_cert, hosts, addresses, now)
    _write_private(files.broker_keystore,
                   _private_pem(key) + _pem(certificate) + _pem(ca_cert))


def _fresh(certificate: x509.Certificate, now: datetime.datetime) -> bool:
    return (certificate.not_valid_before_utc <= now
            and certificate.not_valid_after_utc - now > RENEW_BEFORE)


def _reusable_authority(directory: Path, now: datetime.datetime
                        ) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate] | None:
    """The CA of `directory` when its certificate and key are there, match and are not
    about to expire."""
    try:
        certificate = x509.load_pem_x509_certificate((directory / CA_FILE).read_bytes())
        key = serialization.load_pem_private_key((directory / CA_KEY_FILE).read_bytes(),
                                                 password=None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not _fresh(certificate, now):
        return None
    if key.public_key() != certificate.public_key():
        return None
    return key, certificate


def _keystore_fits(path: Path, ca_cert: x509.Certificate, hosts: tuple[str, ...],
                   addresses: tuple[str, ...], now: datetime.datetime) -> bool:
    """Whether the broker key store at `path` holds a key and a certificate of it, signed
    by `ca_cert`, naming `hosts` and `addresses`, and not about to expire."""
    try:
        data = path.read_bytes()
        key = serialization.load_pem_private_key(data, password=None)
        certificate = x509.load_pem_x509_certificates(data)[0]
        certificate.verify_directly_issued_by(ca_cert)
        names = certificate.extensions.get_extension_for_class(
            x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, IndexError, x509.ExtensionNotFound,
            InvalidSignature):
        return False
    wanted = {*hosts, *(ipaddress.ip_address(a) for a in addresses)}
    named = {*names.get_values_for_type(x509.DNSName),
             *names.get_values_for_type(x509.IPAddress)}
    return (isinstance(key, ec.EllipticCurvePrivateKey)
            and key.public_key() == certificate.public_key()
            and wanted <= named and _fresh(certificate, now))


def ensure_certificates(directory: Path, hosts: tuple[str, ...] = ("localhost",),
                        addresses: tuple[str, ...] = ("127.0.0.1",), *,
                        now: datetime.datetime | None = None
                        ) -> tuple[Certificates, list[str]]:
    """The certificates of `directory`, reused where they are there and fit: a CA whose
    key is there too, a broker key store it signed for `hosts` and `addresses`, an
    unrelated CA; what is missing, expires within `RENEW_BEFORE` or no longer fits is made
    again (a new CA means a new broker certificate). Returns the files and the names of
    those made anew (empty when everything was reused). `now`: the time to judge by."""
    directory.mkdir(parents=True, exist_ok=True)
    now = now or datetime.datetime.now(datetime.UTC)
    files = _files(directory)
    authority = _reusable_authority(directory, now)
    if authority is None:
        return generate_certificates(directory, hosts, addresses, now=now), [
            CA_FILE, CA_KEY_FILE, BROKER_KEYSTORE_FILE, UNTRUSTED_CA_FILE]
    made: list[str] = []
    ca_key, ca_cert = authority
    if not _keystore_fits(files.broker_keystore, ca_cert, hosts, addresses, now):
        _write_keystore(files, ca_key, ca_cert, hosts, addresses, now)
        made.append(BROKER_KEYSTORE_FILE)
    try:
        _ = x509.load_pem_x509_certificate(files.untrusted_ca.read_bytes())
    except (OSError, ValueError):
        files.untrusted_ca.write_bytes(_pem(_authority("processor untrusted CA", now)[1]))
        made.append(UNTRUSTED_CA_FILE)
    return files, made


def new_password() -> str:
    return secrets.token_urlsafe(18)


def read_passwords(path: Path) -> dict[str, str]:
    """The user -> password mapping kept at `path` (`scram-users.yaml`); empty when the
    file is missing. A file that is not such a mapping is a ConfigError."""
    try:
        document = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the SCRAM users' passwords: {exc}") from None
    if document is None:
        return {}
    if not isinstance(document, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and v for k, v in document.items()):
        raise ConfigError(f"{path}: expected a mapping of user name to password; remove "
                          "the file to make new passwords")
    return dict(document)


def _check_user(name: str) -> None:
    # Names go into Kafka's --add-scram syntax (`[name=...,password=...]`) and into
    # principals (`User:name`): keep them to characters that need no quoting there.
    if not name or not all(c.isalnum() or c in "._-" for c in name):
        raise ConfigError(f"SCRAM user name {name!r}: use letters, digits, '.', '_' or '-'")


def _check_password(name: str, password: str) -> None:
    # Kafka's --add-scram syntax splits on commas and strips quotes and blanks around a
    # value; what it would misread is refused rather than changed.
    if any(c in password for c in ',[]"') or password != password.strip() or \
            not password.isprintable():
        raise ConfigError(f"the password of SCRAM user {name!r} may not hold ',', '[', ']', "
                          "'\"', control characters or blanks at either end")


def _jaas(module: str, username: str, password: str, **extra: str) -> str:
    options = " ".join(f'{k}="{v}"' for k, v in {"username": username, "password": password,
                                                   **extra}.items())
    return f"{module} required {options};"


@dataclass
class BrokerSecurity:
    """Certificates and users of a SASL_SSL local Kafka (see the module docstring)."""

    directory: Path
    certificates: Certificates
    users: dict[str, str] = field(default_factory=dict)
    """User name -> password, `broker` and `admin` included."""
    renewed: list[str] = field(default_factory=list)
    """The certificate files made at this start (empty: all reused)."""

    @classmethod
    def create(cls, directory: str | Path,
               users: Mapping[str, str] | None = None) -> BrokerSecurity:
        """The certificates of `directory`, reused when they are there and fit, else new
        (`ensure_certificates`), and passwords for `broker`, `admin` and `users` (name ->
        password; an empty password is the one `directory` keeps for the user, else a new
        random one). The passwords are kept in `scram-users.yaml` (mode 0600) for the next
        start. Every file is named by its absolute path, in the broker's settings and in
        the clients' (`write_client_files`), so that they work from any directory."""
        path = Path(os.path.abspath(directory))
        wanted = {BROKER_USER: "", ADMIN_USER: "", **dict(users or {})}
        for name, password in wanted.items():
            _check_user(name)
            _check_password(name, password)
        certificates, renewed = ensure_certificates(path)
        known = read_passwords(path / USERS_FILE)
        chosen = {name: password or known.get(name) or new_password()
                  for name, password in wanted.items()}
        _write_private(path / USERS_FILE, yaml.safe_dump(
            {**known, **chosen}, sort_keys=False).encode())
        return cls(path, certificates, chosen, renewed)

    @property
    def super_users(self) -> tuple[str, ...]:
        return (BROKER_USER, ADMIN_USER)

    def format_arguments(self) -> list[str]:
        """`kafka-storage format` arguments creating every SCRAM user. They hold the
        passwords: `LocalKafka` passes them in an argument file, never on a command line."""
        args: list[str] = []
        for name, password in self.users.items():
            args += ["--add-scram", f"{MECHANISM}=[name={name},password={password}]"]
        return args

    def server_properties(self) -> dict[str, str]:
        """The broker settings that differ from a plaintext node's (see
        `processor.devtools.local_kafka.render_server_properties`)."""
        password = self.users[BROKER_USER]
        scram_module = "org.apache.kafka.common.security.scram.ScramLoginModule"
        plain_module = "org.apache.kafka.common.security.plain.PlainLoginModule"
        return {
            "listener.security.protocol.map": f"{LISTENER}:SASL_SSL,CONTROLLER:SASL_SSL",
            "inter.broker.listener.name": LISTENER,
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            f"listener.name.{LISTENER.lower()}.sasl.enabled.mechanisms": MECHANISM,
            f"listener.name.{LISTENER.lower()}.{MECHANISM.lower()}.sasl.jaas.config":
                _jaas(scram_module, BROKER_USER, password),
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config":
                _jaas(plain_module, BROKER_USER, password, **{f"user_{BROKER_USER}": password}),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.certificates.broker_keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.certificates.ca),
            "ssl.client.auth": "none",
            "ssl.endpoint.identification.algorithm": "https",
            "authorizer.class.name": AUTHORIZER,
            "super.users": ";".join(f"User:{name}" for name in self.super_users),
            "allow.everyone.if.no.acl.found": "false",
        }

    def client_settings(self, user: str = ADMIN_USER, *, password: str | None = None,
                        ca: Path | None = None) -> dict[str, str]:
        """librdkafka settings of a client authenticating as `user` (with its password
        unless `password` is given) and trusting the CA (or `ca`)."""
        if password is None:
            if user not in self.users:
                raise ConfigError(f"no SCRAM user {user!r} on this broker; known: "
                                  f"{', '.join(sorted(self.users))}")
            password = self.users[user]
        return {
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": MECHANISM,
            "sasl.username": user,
            "sasl.password": password,
            "ssl.ca.location": os.path.abspath(ca or self.certificates.ca),
        }

    def write_client_properties(self, path: Path, bootstrap_servers: str,
                                user: str = ADMIN_USER) -> Path:
        """A `key=value` file of `user`'s librdkafka settings (mode 0600: it holds the
        password), as kcat `-F` and other librdkafka clients read it."""
        lines = [f"bootstrap.servers={bootstrap_servers}"]
        lines += [f"{k}={v}" for k, v in self.client_settings(user).items()]
        _write_private(path, ("\n".join(lines) + "\n").encode())
        return path

    def write_client_files(self, bootstrap_servers: str) -> list[str]:
        """For every user but the broker's own, `USER.properties` and `USER.kafka.yaml`
        (bootstrap servers and the `kafka:` settings, for `processor run --config`) in
        `directory`, both mode 0600; returns the user names."""
        names = [name for name in self.users if name != BROKER_USER]
        for name in names:
            self.write_client_properties(self.directory / f"{name}.properties",
                                         bootstrap_servers, name)
            document = {"bootstrap_servers": bootstrap_servers,
                        "kafka": self.client_settings(name)}
            _write_private(self.directory / f"{name}.kafka.yaml",
                           yaml.safe_dump(document, sort_keys=False).encode())
        return names


def set_properties(text: str, overrides: Mapping[str, str]) -> str:
    """`text` (a .properties file) with each key of `overrides` set: an existing
    `key=...` line is replaced in place, a new key appended."""
    lines = text.splitlines()
    done: set[str] = set()
    for i, line in enumerate(lines):
        key = line.split("=", 1)[0].strip()
        if "=" in line and not line.lstrip().startswith("#") and key in overrides:
            lines[i] = f"{key}={overrides[key]}"
            done.add(key)
    extra = [f"{k}={v}" for k, v in overrides.items() if k not in done]
    if extra:
        lines += ["", "# Transport security (processor.devtools.kafka_security)", *extra]
    return "\n".join(lines) + "\n"


def stage_acls(user: str, input_topic: str, group: str, output_topics: Iterable[str],
               transactional_id: str | None = None) -> list[AclBinding]:
    """The ACLs a stage running as `user` needs: READ on its input topic and group, WRITE
    on its output and dead-letter topics (READ and WRITE imply DESCRIBE), and for an
    exactly-once stage WRITE on its transactional id (a prefix: the runner appends the
    host and a slot). The idempotent producer needs no IDEMPOTENT_WRITE on the cluster
    when it may write some topic (Kafka 3.0 and later)."""
    principal = f"User:{user}"

    def allow(kind: ResourceType, name: str, operation: AclOperation,
              pattern: ResourcePatternType = ResourcePatternType.LITERAL) -> AclBinding:
        return AclBinding(kind, name, pattern, principal, "*", operation,
                          AclPermissionType.ALLOW)

    bindings = [allow(ResourceType.TOPIC, input_topic, AclOperation.READ),
                allow(ResourceType.GROUP, group, AclOperation.READ)]
    bindings += [allow(ResourceType.TOPIC, topic, AclOperation.WRITE)
                 for topic in dict.fromkeys(output_topics)]
    if transactional_id is not None:
        bindings.append(allow(ResourceType.TRANSACTIONAL_ID, transactional_id,
                              AclOperation.WRITE, ResourcePatternType.PREFIXED))
    return bindings


def describe_acl(user: str, kind: ResourceType, name: str) -> AclBinding:
    """DESCRIBE on one resource: a topic seen but neither read nor written."""
    return AclBinding(kind, name, ResourcePatternType.LITERAL, f"User:{user}", "*",
                      AclOperation.DESCRIBE, AclPermissionType.ALLOW)


def create_acls(bootstrap_servers: str, settings: Mapping[str, str],
                bindings: Iterable[AclBinding], timeout: float = 30.0) -> None:
    """Create `bindings` with an admin client of `settings` (a super user's)."""
    admin = AdminClient({"bootstrap.servers": bootstrap_servers, **settings})
    for future in admin.create_acls(list(bindings), request_timeout=timeout).values():
        future.result(timeout)
