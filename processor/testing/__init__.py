"""Testing a whole pipeline: `PipelineDriver` runs a pipeline file in one process on the
in-memory broker, with a clock the test moves (docs/pipelines.md)."""

from processor.testing.driver import DriverError, PipelineDriver, Record

__all__ = ["DriverError", "PipelineDriver", "Record"]
