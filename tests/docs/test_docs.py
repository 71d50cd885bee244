"""README.md and docs/*.md run as written: one test per doc runs its shell and Python
blocks in order (tests/docs/runner.py, docs/contributing.md), against the session's broker
and registry and, for `secured` blocks, the module's SASL_SSL broker.

Each doc deletes, when it ends, the topics it created on the session's broker and the
subjects it registered, so that docs do not see each other's leftovers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import yaml

from tests.docs.conftest import counts
from tests.docs.markdown import Block, parse
from tests.docs.runner import ROOT, DocFailure, DocRun, Outcome, SecuredBroker, Servers, sessions
from tests.kafka_fixtures import Secured

pytestmark = pytest.mark.timeout(600)

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
T = TypeVar("T")


def once(make: Callable[[], T]) -> Callable[[], T]:
    """`make`, called at most once (a server is started only when a block needs it)."""
    made: list[T] = []

    def get() -> T:
        if not made:
            made.append(make())
        return made[0]

    return get


def secured_broker(secured: Secured) -> SecuredBroker:
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.admin._scram import (
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    from processor.devtools.kafka_security import new_password

    admin_settings = secured.security.client_settings()

    def write_files(folder: Path, users: list[str]) -> None:
        """What `processor broker --secure folder --user U...` writes, for the users
        created here on the running broker."""
        folder.mkdir(parents=True, exist_ok=True)
        ca = folder / "ca.pem"
        ca.write_bytes(secured.security.certificates.ca.read_bytes())
        (folder / "untrusted-ca.pem").write_bytes(
            secured.security.certificates.untrusted_ca.read_bytes())
        passwords = {"admin": secured.security.users["admin"]}
        passwords.update({user: new_password() for user in users})
        if users:
            client = AdminClient({"bootstrap.servers": secured.bootstrap, **admin_settings})
            info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
            futures = client.alter_user_scram_credentials(
                [UserScramCredentialUpsertion(user, info, passwords[user].encode())
                 for user in users])
            for future in futures.values():
                future.result(30)
        for user, password in passwords.items():
            settings = secured.security.client_settings(user, password=password, ca=ca)
            properties = folder / f"{user}.properties"
            properties.touch(mode=0o600)
            properties.write_text("\n".join(
                [f"bootstrap.servers={secured.bootstrap}"]
                + [f"{k}={v}" for k, v in settings.items()]) + "\n", encoding="utf-8")
            settings_file = folder / f"{user}.kafka.yaml"
            settings_file.touch(mode=0o600)
            settings_file.write_text(yaml.safe_dump(
                {"bootstrap_servers": secured.bootstrap, "kafka": settings},
                sort_keys=False), encoding="utf-8")

    return SecuredBroker(secured.bootstrap, admin_settings, write_files)


def topics(bootstrap: str) -> set[str]:
    from processor.backends.kafka import KafkaBroker

    return set(KafkaBroker(bootstrap).admin().list_topics())


def delete_new_topics(bootstrap: str, before: set[str]) -> None:
    from processor.backends.kafka import KafkaBroker

    admin = KafkaBroker(bootstrap).admin()
    for topic in sorted(set(admin.list_topics()) - before):
        if not topic.startswith("__"):
            admin.delete_topic(topic)


def subjects(url: str) -> set[str]:
    import httpx

    response = httpx.get(f"{url}/subjects", timeout=10)
    response.raise_for_status()
    return set(response.json())


def delete_new_subjects(url: str, before: set[str]) -> None:
    import httpx

    for subject in sorted(subjects(url) - before):
        for permanent in ("false", "true"):
            httpx.delete(f"{url}/subjects/{subject}", params={"permanent": permanent},
                         timeout=10)


def test_the_markers_parse() -> None:
    """Every doc's markers are known ones, each before a block (fails at once otherwise)."""
    for doc in DOCS:
        parse(doc)


@pytest.mark.kafka
@pytest.mark.parametrize("doc", DOCS, ids=[str(d.relative_to(ROOT)) for d in DOCS])
def test_doc(doc: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    started = time.monotonic()
    blocks: list[Block] = parse(doc)
    outcome = Outcome()
    doc_sessions = sessions(blocks, outcome)
    outcome.run = sum(len(s.blocks) for s in doc_sessions if s.file is None)
    cleanups: list[Callable[[], None]] = []

    def bootstrap() -> str:
        address: str = request.getfixturevalue("kafka_bootstrap")
        before = topics(address)
        cleanups.append(lambda: delete_new_topics(address, before))
        return address

    def registry() -> str:
        url: str = request.getfixturevalue("schema_registry_url")
        before = subjects(url)
        cleanups.append(lambda: delete_new_subjects(url, before))
        return url

    def secured() -> SecuredBroker:
        return secured_broker(request.getfixturevalue("secured_kafka"))

    run = DocRun(doc, tmp_path, Servers(once(bootstrap), once(registry), once(secured)))
    failure: DocFailure | None = None
    try:
        for session in doc_sessions:
            run.run(session)
    except DocFailure as error:
        failure = error
    finally:
        run.stop()
        for cleanup in cleanups:
            cleanup()
        request.node.user_properties.append(
            counts(str(doc.relative_to(ROOT)), outcome, time.monotonic() - started))
    if failure is not None:
        pytest.fail(str(failure), pytrace=False)
