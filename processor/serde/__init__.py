"""Serialisation: the Avro codec for artifacts (`codec`: schema loading, fingerprints,
writer schemas, the `Codec`), its specialised encoder and decoder for the packaged schema
(`fast`, byte-identical to fastavro, which handles every other schema), a stage's codec on
the wire with the writer schema's identity (`wire`: the `artifact-schema` header, or the
Confluent wire format through a schema registry, `registry`), plain records in and out
(`formats`), and the JSON form that `produce` and `tail` speak (`jsonform`). The wire
contract is `schemas/artifact.avsc`. It depends on `core` only."""
