"""Kafka transport security without a broker: the local Kafka's certificates, broker
settings, users and ACLs; the errors an authentication or authorization failure becomes;
and the TLS/SASL client settings passing through every settings source, secrets redacted.
(The same against a real broker: tests/integration/test_kafka_security.py.)"""

from __future__ import annotations

import argparse
import io
import ipaddress
import logging
from pathlib import Path

import pytest
import yaml
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin._acl import AclOperation
from confluent_kafka.admin._resource import ResourcePatternType, ResourceType
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec

from processor.backends.abstract import DeliveryError
from processor.backends.kafka.errors import denied, is_denied, raise_kafka
from processor.cli.main import main
from processor.core.errors import AuthenticationFailed, ConfigError, NotAuthorized
from processor.devtools.kafka_security import (
    AUTHORIZER,
    BrokerSecurity,
    generate_certificates,
    set_properties,
    stage_acls,
)
from processor.devtools.local_kafka import NodeConfig, render_server_properties
from processor.ops.logs import configure_logging, register_secret
from processor.ops.settings import add_run_arguments, load_config, secret_values
from processor.runtime.commit import _failed

SECRETS = {
    "sasl.password": "yaml-sasl-pw",
    "ssl.key.password": "yaml-key-pw",
    "ssl.keystore.password": "yaml-keystore-pw",
    "ssl.key.pem": "-----BEGIN PRIVATE KEY-----yaml",
}


def _verifies(issuer: x509.Certificate, certificate: x509.Certificate) -> bool:
    key = issuer.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    hash_algorithm = certificate.signature_hash_algorithm
    assert hash_algorithm is not None
    try:
        key.verify(certificate.signature, certificate.tbs_certificate_bytes,
                   ec.ECDSA(hash_algorithm))
    except InvalidSignature:
        return False
    return True


def test_the_broker_certificate_is_signed_by_the_ca_and_names_the_loopback(
        tmp_path: Path) -> None:
    files = generate_certificates(tmp_path / "tls")
    ca = x509.load_pem_x509_certificate(files.ca.read_bytes())
    other = x509.load_pem_x509_certificate(files.untrusted_ca.read_bytes())
    keystore = files.broker_keystore.read_bytes()
    assert keystore.startswith(b"-----BEGIN PRIVATE KEY-----")
    broker, chain_ca = x509.load_pem_x509_certificates(keystore.split(
        b"-----END PRIVATE KEY-----\n", 1)[1])
    assert chain_ca == ca
    assert _verifies(ca, broker) and not _verifies(other, broker)
    names = broker.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert files.broker_keystore.stat().st_mode & 0o777 == 0o600


def test_a_secured_node_serves_sasl_ssl_only_with_the_authorizer(tmp_path: Path) -> None:
    security = BrokerSecurity.create(tmp_path / "tls", users={"orders": "orders-pw"})
    assert set(security.users) == {"broker", "admin", "orders"}
    assert security.users["orders"] == "orders-pw"
    assert len(security.users["admin"]) >= 20  # random
    node = NodeConfig(0, 9092, 9093, tmp_path / "node-0")
    plain = render_server_properties(node, [node])
    text = set_properties(plain.replace("PLAINTEXT://", "SECURE://"),
                          security.server_properties())
    settings = dict(line.split("=", 1) for line in text.splitlines()
                    if "=" in line and not line.startswith("#"))
    assert settings["listeners"] == "SECURE://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093"
    assert settings["advertised.listeners"] == "SECURE://127.0.0.1:9092"
    assert settings["listener.security.protocol.map"] == "SECURE:SASL_SSL,CONTROLLER:SASL_SSL"
    assert settings["inter.broker.listener.name"] == "SECURE"
    assert settings["authorizer.class.name"] == AUTHORIZER
    assert settings["super.users"] == "User:broker;User:admin"
    assert settings["allow.everyone.if.no.acl.found"] == "false"
    assert settings["ssl.keystore.type"] == settings["ssl.truststore.type"] == "PEM"
    assert "PLAINTEXT" not in text.replace("PLAINTEXT:PLAINTEXT", "")
    assert text.count("listener.security.protocol.map=") == 1  # replaced, not repeated
    assert security.format_arguments()[-2:] == [
        "--add-scram", "SCRAM-SHA-512=[name=orders,password=orders-pw]"]


@pytest.mark.parametrize("name", ["", "two words", "a,b", "x]y", "ünïcode\n"])
def test_user_names_that_kafka_would_misread_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ConfigError, match="SCRAM user name"):
        BrokerSecurity.create(tmp_path, users={name: "pw"})


def test_client_files_hold_each_users_settings_for_its_owner_only(tmp_path: Path) -> None:
    security = BrokerSecurity.create(tmp_path, users={"orders": ""})
    assert sorted(security.write_client_files("127.0.0.1:9092")) == ["admin", "orders"]
    document = yaml.safe_load((tmp_path / "orders.kafka.yaml").read_text())
    assert document == {"bootstrap_servers": "127.0.0.1:9092", "kafka": {
        "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "orders", "sasl.password": security.users["orders"],
        "ssl.ca.location": str(tmp_path / "ca.pem")}}
    properties = (tmp_path / "orders.properties").read_text().splitlines()
    assert "security.protocol=SASL_SSL" in properties
    for name in ("orders.kafka.yaml", "orders.properties", "admin.properties"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600
    assert not (tmp_path / "broker.properties").exists()
    with pytest.raises(ConfigError, match="no SCRAM user 'nobody'"):
        security.client_settings("nobody")


def test_a_stage_needs_read_on_input_and_group_and_write_on_outputs() -> None:
    acls = stage_acls("orders", "in", "g", ["out", "dlq", "out"], transactional_id="t")
    assert {(a.restype, a.name, a.operation, a.resource_pattern_type) for a in acls} == {
        (ResourceType.TOPIC, "in", AclOperation.READ, ResourcePatternType.LITERAL),
        (ResourceType.GROUP, "g", AclOperation.READ, ResourcePatternType.LITERAL),
        (ResourceType.TOPIC, "out", AclOperation.WRITE, ResourcePatternType.LITERAL),
        (ResourceType.TOPIC, "dlq", AclOperation.WRITE, ResourcePatternType.LITERAL),
        (ResourceType.TRANSACTIONAL_ID, "t", AclOperation.WRITE,
         ResourcePatternType.PREFIXED),
    }
    assert len(acls) == 5 and {a.principal for a in acls} == {"User:orders"}


def test_authentication_and_authorization_failures_say_what_to_check() -> None:
    login = denied(KafkaError(KafkaError._AUTHENTICATION, "invalid credentials"), "connect")
    assert isinstance(login, AuthenticationFailed)
    assert "authentication failed (invalid credentials)" in str(login)
    assert "sasl.password" in str(login)
    tls = denied(KafkaError(KafkaError._SSL, "certificate verify failed"), "connect")
    assert isinstance(tls, AuthenticationFailed) and "ssl.ca.location" in str(tls)
    group = denied(KafkaError(KafkaError.GROUP_AUTHORIZATION_FAILED), "commit")
    assert isinstance(group, NotAuthorized) and "consumer group (READ)" in str(group)
    assert not is_denied(KafkaError(KafkaError._TRANSPORT)) and not is_denied(None)


@pytest.mark.parametrize("code", [KafkaError.TOPIC_AUTHORIZATION_FAILED,
                                  KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED])
def test_a_denied_call_raises_not_authorized_even_in_a_transaction(code: int) -> None:
    # A missing transactional-id ACL is not another producer fencing this one.
    with pytest.raises(NotAuthorized, match="grant this client's principal an ACL"):
        raise_kafka(KafkaException(KafkaError(code)), "init_transactions", transactional=True)


def test_a_write_the_authorizer_refused_names_the_topic() -> None:
    errors = [DeliveryError("out", 0, b"k", "Broker: Topic authorization failed", False,
                            not_authorized=True),
              DeliveryError("out", 1, b"k", "Broker: Topic authorization failed", False,
                            not_authorized=True)]
    message = str(_failed("s", errors))
    assert message.startswith("stage s: not authorized to write to topic out (")
    assert "WRITE" in message and "2 outputs failed" in message


def _flags(*argv: str) -> dict[str, object]:
    parser = argparse.ArgumentParser(prog="processor run")
    add_run_arguments(parser)
    return vars(parser.parse_args(list(argv)))


def test_tls_and_sasl_settings_pass_through_every_source_and_never_print(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "stage.yaml"
    config.write_text(yaml.safe_dump({
        "input_topic": "in", "group": "g", "handlers": ["validate"],
        "bootstrap_servers": "127.0.0.1:9093",
        "kafka": {"security.protocol": "SASL_SSL", "ssl.ca.location": "/tls/ca.pem",
                  **SECRETS}}))
    env = {"PROCESSOR_KAFKA__SASL_USERNAME": "orders",
           "PROCESSOR_KAFKA__SASL_PASSWORD": "env-sasl-pw"}
    cfg = load_config(config, env, _flags("--set", "sasl.mechanism=SCRAM-SHA-512",
                                          "--set", "ssl.keystore.password=flag-ks-pw"))
    assert dict(cfg.kafka) == {
        "security.protocol": "SASL_SSL", "ssl.ca.location": "/tls/ca.pem",
        **SECRETS, "sasl.username": "orders", "sasl.password": "env-sasl-pw",
        "sasl.mechanism": "SCRAM-SHA-512", "ssl.keystore.password": "flag-ks-pw"}
    shown = cfg.describe()
    for line in ("security.protocol: SASL_SSL", "sasl.username: orders",
                 "sasl.mechanism: SCRAM-SHA-512", "ssl.ca.location: /tls/ca.pem",
                 "sasl.password: ***", "ssl.key.password: ***",
                 "ssl.keystore.password: ***", "ssl.key.pem: ***"):
        assert line in shown
    every_secret = [*SECRETS.values(), "env-sasl-pw", "flag-ks-pw"]
    assert not any(secret in shown for secret in every_secret)
    # `processor config check` prints the file's settings, secrets redacted.
    assert main(["config", "check", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "sasl.password: ***" in printed
    assert not any(secret in printed for secret in SECRETS.values())
    # Logs: the runner registers the configuration's secrets, scrubbed from every line.
    assert set(secret_values(cfg.kafka)) == {"yaml-key-pw", "-----BEGIN PRIVATE KEY-----yaml",
                                             "env-sasl-pw", "flag-ks-pw"}
    root = logging.getLogger()
    level = root.level
    stream = io.StringIO()
    handler = configure_logging("text", "INFO", stream=stream)
    try:
        for value in secret_values(cfg.kafka):
            register_secret(value)
        logging.getLogger("processor.test").error(
            "login failed with %s / %s", "env-sasl-pw", "flag-ks-pw")
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    assert "login failed with *** / ***" in stream.getvalue()
