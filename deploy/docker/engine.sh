#!/usr/bin/env bash
# A private Docker engine for machines with no usable Docker, confined to the loopback interface.
#
#   deploy/docker/engine.sh start    # install if needed, start (or reuse), print DOCKER_HOST=...
#   deploy/docker/engine.sh env      # print DOCKER_HOST=... when the engine runs (exit 1 if not)
#   deploy/docker/engine.sh stop     # stop it by its pid and unmount what it leaves behind
#
# The engine is Debian's `docker.io` (dockerd + containerd). It runs with its own data root,
# exec root, socket and pidfile, so it never meets a system Docker, and with no bridge and no
# NAT/firewall rules: `--bridge=none --iptables=false --ip6tables=false --ip-masq=false`. No
# network interface or private address is ever created, so every container and every build
# must use host networking (`--network host`). If the package install starts the distribution's
# own daemon with default settings, that daemon is stopped and masked.
#
# Data (images, build cache) persists in $PROCESSOR_DOCKER_DATA (default
# ~/.cache/processor/docker) so that a second run reuses what the first one built.
set -euo pipefail

DATA_ROOT="${PROCESSOR_DOCKER_DATA:-$HOME/.cache/processor/docker}"
EXEC_ROOT="${PROCESSOR_DOCKER_EXEC:-/run/processor-docker}"
SOCKET="$EXEC_ROOT/docker.sock"
PIDFILE="$EXEC_ROOT/dockerd.pid"
LOG="$DATA_ROOT/dockerd.log"
export DOCKER_HOST="unix://$SOCKET"

if [[ "$(id -u)" == 0 ]]; then SUDO=(); else SUDO=(sudo); fi

log() { echo "engine: $*" >&2; }

running() {
  [[ -f "$PIDFILE" ]] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null \
    && docker --host "$DOCKER_HOST" version >/dev/null 2>&1
}

install_packages() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
  [[ ${#missing[@]} -eq 0 ]] && return 0
  log "installing Debian packages: ${missing[*]}"
  # Keep the package's own service from starting during the install (policy-rc.d is honoured
  # by invoke-rc.d); it is stopped and masked below anyway in case it started through systemd.
  local policy=/usr/sbin/policy-rc.d created_policy=0
  if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod +x "$policy"
    created_policy=1
    trap '"${SUDO[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  "${SUDO[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${SUDO[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
  if [[ $created_policy == 1 ]]; then
    "${SUDO[@]}" rm -f "$policy"
    trap - EXIT
  fi
  stop_default_daemon
}

stop_default_daemon() {
  if command -v systemctl >/dev/null && [[ -d /run/systemd/system ]]; then
    "${SUDO[@]}" systemctl stop docker.service docker.socket containerd.service 2>/dev/null || true
    "${SUDO[@]}" systemctl mask docker.service docker.socket containerd.service 2>/dev/null || true
  fi
  local pid
  for pidfile in /var/run/docker.pid /run/docker.pid; do
    if [[ -f "$pidfile" ]]; then
      pid="$(cat "$pidfile")"
      log "stopping the default dockerd (pid $pid)"
      "${SUDO[@]}" kill "$pid" 2>/dev/null || true
    fi
  done
  drop_docker0
}

drop_docker0() {
  if ip link show docker0 >/dev/null 2>&1; then
    log "deleting interface docker0"
    "${SUDO[@]}" ip link delete docker0
  fi
}

start() {
  if running; then
    echo "DOCKER_HOST=$DOCKER_HOST"
    return 0
  fi
  install_packages
  "${SUDO[@]}" mkdir -p "$DATA_ROOT" "$EXEC_ROOT"
  "${SUDO[@]}" rm -f "$PIDFILE" "$SOCKET"
  log "starting dockerd (data $DATA_ROOT, exec $EXEC_ROOT, log $LOG)"
  # setsid: the daemon outlives this script and the caller's process group.
  "${SUDO[@]}" setsid dockerd \
    --data-root "$DATA_ROOT" \
    --exec-root "$EXEC_ROOT" \
    --pidfile "$PIDFILE" \
    --host "$DOCKER_HOST" \
    --bridge=none --iptables=false --ip6tables=false --ip-masq=false \
    --userland-proxy=false \
    >"$LOG" 2>&1 </dev/null &
  local deadline=$((SECONDS + 60))
  until running; do
    if (( SECONDS > deadline )); then
      log "dockerd did not answer within 60 s; last lines of $LOG:"
      tail -n 20 "$LOG" >&2
      exit 1
    fi
    sleep 0.5
  done
  # The invoking user (not everyone) may use the socket.
  if [[ "$(id -u)" != 0 ]]; then "${SUDO[@]}" chown "$(id -u)" "$SOCKET"; fi
  drop_docker0
  echo "DOCKER_HOST=$DOCKER_HOST"
}

stop() {
  if [[ -f "$PIDFILE" ]]; then
    local pid
    pid="$(cat "$PIDFILE")"
    if kill -0 "$pid" 2>/dev/null; then
      log "stopping dockerd (pid $pid)"
      "${SUDO[@]}" kill -TERM "$pid"
      local deadline=$((SECONDS + 30))
      while kill -0 "$pid" 2>/dev/null && (( SECONDS < deadline )); do sleep 0.2; done
      kill -0 "$pid" 2>/dev/null && "${SUDO[@]}" kill -KILL "$pid"
    fi
  fi
  # dockerd leaves its network namespace bind-mounted (exec-root/netns/default) behind.
  if [[ -d "$EXEC_ROOT" ]]; then
    grep -F " $EXEC_ROOT/" /proc/self/mounts | awk '{print $2}' | sort -r | while read -r m; do
      "${SUDO[@]}" umount "$m" 2>/dev/null || "${SUDO[@]}" umount -l "$m" || true
    done
  fi
  "${SUDO[@]}" rm -f "$PIDFILE" "$SOCKET"
  drop_docker0
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  env) running && echo "DOCKER_HOST=$DOCKER_HOST" ;;
  *) echo "usage: $0 start|stop|env" >&2; exit 2 ;;
esac
