"""A pipeline is one file: its model, reading, checks and graph (docs/pipelines.md).

* `model`: the pydantic models of the file and its JSON Schema;
* `load`: reading a file into a `Pipeline`, each stage's effective settings validated;
* `check`: every problem of a pipeline, each at its place in the file;
* `graph`: the edges that follow from the topics, cycles, and Mermaid.
"""

from processor.pipeline.check import Report, check_pipeline
from processor.pipeline.graph import Flow, flow, mermaid
from processor.pipeline.load import Pipeline, Problem, StagePlan, load_pipeline, parse_pipeline
from processor.pipeline.model import PipelineSpec, pipeline_json_schema

__all__ = [
    "Flow", "Pipeline", "PipelineSpec", "Problem", "Report", "StagePlan", "check_pipeline",
    "flow", "load_pipeline", "mermaid", "parse_pipeline", "pipeline_json_schema",
]
