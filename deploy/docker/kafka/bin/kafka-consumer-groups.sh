#!/bin/sh
# kafka-consumer-groups of Apache Kafka (org.apache.kafka.tools.consumer.group.ConsumerGroupCommand).
KAFKA_LOG_LEVEL="${KAFKA_TOOL_LOG_LEVEL:-WARN}" KAFKA_HEAP_OPTS="${KAFKA_TOOL_HEAP_OPTS:--Xmx256m}" exec /opt/kafka/bin/kafka-run-class.sh org.apache.kafka.tools.consumer.group.ConsumerGroupCommand "$@"
