"""A stage's codec from its data-contract settings (docs/data-contracts.md).

`stage_codec` reads the settings `processor run` declares (`schema_file`,
`writer_schemas`, `schema_registry_url` and the other `schema_*` ones, `input_format`
and `output_format`) from anything with those attributes; settings without them (a
`StageSetup` built in code) get the packaged schema, identified by a header. With a
registry URL the codec registers or looks up its schema under the subjects of every topic
the stage writes to, so a schema the registry refuses stops the stage at start, with the
registry's reason. A stage with another input or output format gets a `FormatCodec`.
"""

from __future__ import annotations

from processor.core.errors import ConfigError, SchemaError
from processor.core.options import StageOptions
from processor.serde.codec import Codec, read_schema_file
from processor.serde.formats import FormatCodec, InputFormat, OutputFormat
from processor.serde.registry import RegistryConfig, RegistrySchemas, registry_client
from processor.serde.wire import WireCodec


def output_topics(options: StageOptions) -> list[str]:
    """Every topic a stage writes artifacts to (its dead letters are input bytes)."""
    topics = [options.output_topic, *options.outputs.values()]
    return [t for t in topics if t]


def registry_config(settings: object) -> RegistryConfig | None:
    """The registry settings, or None when no registry URL is set."""
    url = getattr(settings, "schema_registry_url", None)
    if not url:
        return None
    return RegistryConfig(
        url=url,
        subject_strategy=getattr(settings, "schema_subject_strategy", "topic"),
        registration=getattr(settings, "schema_registration", "auto"),
        user=getattr(settings, "schema_registry_user", None),
        password=getattr(settings, "schema_registry_password", None),
        ca_file=getattr(settings, "schema_registry_ca_file", None),
    )


def stage_codec(settings: object, options: StageOptions) -> WireCodec:
    """The codec of a stage with these settings (see the module documentation)."""
    schema_file = getattr(settings, "schema_file", None)
    writers = getattr(settings, "writer_schemas", ())
    codec = Codec(read_schema_file(schema_file) if schema_file else None,
                  writer_schemas=[read_schema_file(path) for path in writers])
    config = registry_config(settings)
    registry = None if config is None else RegistrySchemas(registry_client(config), config)
    input_format: InputFormat = getattr(settings, "input_format", "artifact")
    output_format: OutputFormat = getattr(settings, "output_format", "artifact")
    if (input_format, output_format) != ("artifact", "artifact"):
        try:
            return FormatCodec(codec, registry, output_topics(options),
                               input_format=input_format, output_format=output_format)
        except SchemaError as exc:
            raise ConfigError(str(exc)) from exc
    return WireCodec(codec, registry, output_topics(options))
