# Stand-in for python:3.11-slim, for machines that cannot pull it: Debian bookworm's own
# Python 3.11 in a virtual environment at /opt/python (first on PATH, so `python` and `pip`
# work as in the official image). The certificate authorities the host added locally
# (the build context's ca-certificates/, copied from /usr/local/share/ca-certificates; empty on
# most machines) are installed, so that pip works behind a TLS-inspecting proxy.
ARG DEBIAN_IMAGE=debian:bookworm-slim
FROM ${DEBIAN_IMAGE}
COPY ca-certificates/ /usr/local/share/ca-certificates/
RUN apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       python3 python3-venv ca-certificates >/dev/null \
    && update-ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/python
ENV PATH=/opt/python/bin:$PATH \
    LANG=C.UTF-8 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
CMD ["python3"]
