"""In-process chains: the seed's `Buffer` (bounded, full duplex, with backpressure) and
`Pipeline` of buffers. No broker is involved; it builds on `core` and `serde`."""
