#!/bin/sh
# Runs one Java main class of Apache Kafka with the image's jars: kafka-run-class.sh CLASS [ARGS].
exec java ${KAFKA_HEAP_OPTS:--Xmx256m} -XX:+UseSerialGC -Djava.awt.headless=true \
  -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties \
  -cp '/opt/kafka/libs/*' "$@"
