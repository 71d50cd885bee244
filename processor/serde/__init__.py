"""Serialisation: the Avro codec for artifacts (a specialised fast path, byte-identical to
fastavro, with fastavro for every other schema) and the JSON form that `produce` and
`tail` speak. It depends on `core` only."""
