#!/bin/sh
# Entry point of the Kafka image: writes server.properties from the environment, formats the
# KRaft storage on first start, then replaces itself with the broker (which so receives SIGTERM
# directly and shuts down cleanly).
#
# Like the official image, KAFKA_FOO_BAR=value becomes foo.bar=value ("___" stands for "-" and
# "__" for "_"). KAFKA_HEAP_OPTS, KAFKA_LOG_LEVEL, KAFKA_TOOL_HEAP_OPTS, KAFKA_TOOL_LOG_LEVEL and CLUSTER_ID are not
# broker settings. With no KAFKA_* setting at all, a single-node KRaft broker+controller runs on
# localhost:9092 (controller localhost:9093).
set -eu
config_dir=/var/lib/kafka/config
data_dir="${KAFKA_LOG_DIRS:-/var/lib/kafka/data}"
mkdir -p "$config_dir" "$data_dir"
props="$config_dir/server.properties"

settings=$(env | grep '^KAFKA_' | grep -vE '^KAFKA_(HEAP_OPTS|LOG_LEVEL|TOOL_HEAP_OPTS|TOOL_LOG_LEVEL)=' || true)
if [ -z "$settings" ]; then
  settings="KAFKA_NODE_ID=1
KAFKA_PROCESS_ROLES=broker,controller
KAFKA_LISTENERS=PLAINTEXT://localhost:9092,CONTROLLER://localhost:9093
KAFKA_ADVERTISED_LISTENERS=PLAINTEXT://localhost:9092
KAFKA_CONTROLLER_LISTENER_NAMES=CONTROLLER
KAFKA_LISTENER_SECURITY_PROTOCOL_MAP=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
KAFKA_CONTROLLER_QUORUM_VOTERS=1@localhost:9093
KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR=1
KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR=1
KAFKA_TRANSACTION_STATE_LOG_MIN_ISR=1
KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS=0"
fi
echo "$settings" | while IFS= read -r line; do
  key=${line%%=*}
  value=${line#*=}
  name=$(echo "${key#KAFKA_}" | tr 'A-Z' 'a-z' | sed -e 's/___/-/g' -e 's/__/@/g' -e 's/_/./g' -e 's/@/_/g')
  printf '%s=%s\n' "$name" "$value"
done > "$props"
grep -q '^log.dirs=' "$props" || echo "log.dirs=$data_dir" >> "$props"

if [ ! -f "$data_dir/meta.properties" ]; then
  cluster_id="${CLUSTER_ID:-$(/opt/kafka/bin/kafka-storage.sh random-uuid)}"
  /opt/kafka/bin/kafka-storage.sh format --ignore-formatted -t "$cluster_id" -c "$props"
fi
exec /opt/kafka/bin/kafka-run-class.sh kafka.Kafka "$props"
