"""Developer tooling shipped with the package: a local Apache Kafka (KRaft) started from
Maven jars, whose pom and configuration templates are package data, so `processor broker`
works from an installed wheel. Only the CLI and the tests import it."""
