"""The demo: three order-processing stages (validate -> transform -> enrich).

`processor.demo:validate` (and `transform`, `enrich`) name the demo's handlers, usable with
`processor run --handler` on Kafka as well; `processor.demo.run` runs the three stages on
the in-memory broker (`processor demo`). Nothing in the package imports the demo except
the CLI.
"""

from processor.demo.handlers import enrich, transform, validate

__all__ = ["enrich", "transform", "validate"]
