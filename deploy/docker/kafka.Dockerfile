# Stand-in for the official apache/kafka image, for machines that cannot pull it: the same
# Apache Kafka jars as `processor broker`, from Maven Central (kafka/pom.xml, resolved on the
# host into the build context's libs/), on Debian's OpenJDK 17. Configured like the official
# image: every KAFKA_FOO_BAR environment variable becomes the broker setting foo.bar; with none
# set it is a single-node KRaft broker+controller on localhost:9092 (controller on 9093).
#
#   docker build --network host -f deploy/docker/kafka.Dockerfile \
#     --build-arg DEBIAN_IMAGE=processor-local/debian:bookworm -t processor-local/kafka:4.1.1 <context>
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
RUN apt-get update -qq \
    && mkdir -p /usr/share/man/man1 \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       openjdk-17-jre-headless >/dev/null \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 1000 --user-group --home-dir /var/lib/kafka --create-home \
       --shell /usr/sbin/nologin appuser
COPY libs/ /opt/kafka/libs/
COPY bin/ /opt/kafka/bin/
COPY log4j2.properties /opt/kafka/config/log4j2.properties
ENV PATH=/opt/kafka/bin:$PATH KAFKA_HEAP_OPTS="-Xmx512m -Xms128m"
USER appuser
WORKDIR /var/lib/kafka
EXPOSE 9092
ENTRYPOINT ["/opt/kafka/bin/run-kafka.sh"]
