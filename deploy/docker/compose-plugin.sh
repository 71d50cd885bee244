#!/usr/bin/env bash
# Installs Docker Compose v2 as a Docker CLI plugin (~/.docker/cli-plugins/docker-compose) when
# `docker compose` is missing, by building it from source through the Go module proxy.
#
# Compose is a Go program; its module cannot be built with a plain `go install` because its
# go.mod carries `exclude` directives, which only apply to the main module. A two-line wrapper
# module therefore requires compose and repeats those directives, then builds its command.
# Cold, this takes a few minutes (downloads and compiles); the result is cached by version.
#
#   deploy/docker/compose-plugin.sh            # install if missing, print the plugin path
#   COMPOSE_VERSION=v2.40.3 deploy/docker/compose-plugin.sh
set -euo pipefail

COMPOSE_VERSION="${COMPOSE_VERSION:-v2.40.3}"
PLUGIN_DIR="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"
PLUGIN="$PLUGIN_DIR/docker-compose"
STAMP="$PLUGIN.version"

if [[ -x "$PLUGIN" && "$(cat "$STAMP" 2>/dev/null)" == "$COMPOSE_VERSION" ]]; then
  echo "$PLUGIN"
  exit 0
fi
if [[ ! -x "$PLUGIN" ]] && docker compose version >/dev/null 2>&1; then
  # A compose plugin is already installed elsewhere (Docker Desktop, docker-compose-plugin).
  command -v docker
  exit 0
fi
# Compose needs Go >= 1.24. An older or missing Go is replaced by the official toolchain, which
# the Go module proxy serves as the module golang.org/toolchain.
GO_TOOLCHAIN="${GO_TOOLCHAIN:-go1.24.9}"
go_command() {
  if command -v go >/dev/null && go version | grep -qE 'go1\.(2[4-9]|[3-9][0-9])(\.| )'; then
    command -v go
    return
  fi
  local arch
  case "$(uname -m)" in
    x86_64) arch=amd64 ;;
    aarch64 | arm64) arch=arm64 ;;
    *) echo "compose-plugin: no Go toolchain for $(uname -m)" >&2; exit 1 ;;
  esac
  local cache="$HOME/.cache/processor/go-toolchain"
  local module="golang.org/toolchain@v0.0.1-$GO_TOOLCHAIN.linux-$arch"
  if [[ ! -x "$cache/$module/bin/go" ]]; then
    local proxy="${GOPROXY:-https://proxy.golang.org}"
    proxy="${proxy%%,*}"
    echo "compose-plugin: fetching $module from $proxy" >&2
    mkdir -p "$cache"
    curl -fsSL "$proxy/golang.org/toolchain/@v/v0.0.1-$GO_TOOLCHAIN.linux-$arch.zip" \
      -o "$cache/toolchain.zip"
    python3 -m zipfile -e "$cache/toolchain.zip" "$cache"
    rm -f "$cache/toolchain.zip"
    chmod -R a+x "$cache/$module/bin" "$cache/$module/pkg/tool"
  fi
  echo "$cache/$module/bin/go"
}
GO="$(go_command)"
export GOTOOLCHAIN=local

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
cat > go.mod <<MOD
module local/compose-build

go 1.24

require github.com/docker/compose/v2 $COMPOSE_VERSION
MOD
# Compose's own go.mod excludes these versions; repeat its exclude and replace blocks here.
modfile="$("$GO" env GOMODCACHE)/cache/download/github.com/docker/compose/v2/@v/$COMPOSE_VERSION.mod"
GOFLAGS=-mod=mod "$GO" mod download "github.com/docker/compose/v2@$COMPOSE_VERSION"
sed -n '/^exclude (/,/^)/p; /^replace (/,/^)/p; /^exclude [^(]/p; /^replace [^(]/p' "$modfile" >> go.mod
cat > tools.go <<'SRC'
//go:build tools

package tools

import _ "github.com/docker/compose/v2/cmd"
SRC
GOFLAGS=-mod=mod "$GO" mod tidy -e >/dev/null 2>&1 || true
GOFLAGS=-mod=mod nice -n 10 "$GO" build -trimpath \
  -ldflags "-s -w -X github.com/docker/compose/v2/internal.Version=$COMPOSE_VERSION" \
  -o docker-compose github.com/docker/compose/v2/cmd
mkdir -p "$PLUGIN_DIR"
install -m 0755 docker-compose "$PLUGIN"
echo "$COMPOSE_VERSION" > "$STAMP"
echo "$PLUGIN"
