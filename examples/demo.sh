#!/usr/bin/env bash
# The seed's workflow on one machine: build an image, tag and push it, run it with published
# ports and limits, see it answer, then clean up. Run through `make demo` (it installs first).
set -euo pipefail
cd "$(dirname "$0")/.."
DEMO="$PWD/.demo"
export DOCKYARD_DATA_DIR="$DEMO/data"
# docker's usual ports, or free ones when something else holds them
free_or() { python3 -c 'import socket,sys
s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try: s.bind(("127.0.0.1", int(sys.argv[1])))
except OSError: s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])' "$1"; }
export DOCKYARD_REGISTRY_ADDR="${DOCKYARD_REGISTRY_ADDR:-127.0.0.1:$(free_or 5000)}"
export DOCKER_CONFIG="$DEMO/docker-config"
export PATH="$PWD/.venv/bin:$PATH"
REG="$DOCKYARD_REGISTRY_ADDR"
PORT="${DEMO_PORT:-$(free_or 8080)}"
rm -rf "$DEMO" && mkdir -p "$DEMO/work" "$DOCKYARD_DATA_DIR"

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { step "$*"; "$@"; }

step "dockyard up   # embedded NATS + layer-store, registry-gateway, builder, runtime-agent, garbage-collector"
dockyard up --nats-port 0 > "$DEMO/up.log" 2>&1 &
UP=$!
cleanup() { dockyard rm -f kuard >/dev/null 2>&1 || true; kill -TERM $UP 2>/dev/null; wait $UP 2>/dev/null || true; }
trap cleanup EXIT
for _ in $(seq 600); do
  [ -f "$DOCKYARD_DATA_DIR/stack.json" ] && break
  kill -0 $UP 2>/dev/null || { cat "$DEMO/up.log"; exit 1; }
  sleep 0.1
done
[ -f "$DOCKYARD_DATA_DIR/stack.json" ] || { echo "the stack did not start"; cat "$DEMO/up.log"; exit 1; }
export DOCKYARD_NATS_URL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nats_url"])' "$DOCKYARD_DATA_DIR/stack.json")
cat "$DEMO/up.log"
run dockyard status

step "dockyard login $REG -u admin --password-stdin < \$DOCKYARD_DATA_DIR/admin-password"
dockyard login "$REG" -u admin --password-stdin < "$DOCKYARD_DATA_DIR/admin-password"

step "python examples/busybox.py rootfs-tar busybox.tar   # no public registry here: a base from busybox-static"
python examples/busybox.py rootfs-tar "$DEMO/work/busybox.tar"
run dockyard import "$DEMO/work/busybox.tar" busybox:latest

run dockyard build -t kuard-amd64:1 examples/kuard
run dockyard images
run dockyard history kuard-amd64:1
run dockyard tag kuard-amd64:1 "$REG/kuar-demo/kuard-amd64:1"
run dockyard push "$REG/kuar-demo/kuard-amd64:1"

step "skopeo inspect docker://$REG/kuar-demo/kuard-amd64:1   # any OCI client sees it"
skopeo inspect --tls-verify=false --creds "admin:$(cat "$DOCKYARD_DATA_DIR/admin-password")" \
  "docker://$REG/kuar-demo/kuard-amd64:1" | head -n 12

run dockyard run -d --name kuard --publish "$PORT:8080" --memory 200m --memory-swap 1G --cpu-shares 1024 \
  "$REG/kuar-demo/kuard-amd64:1"
run dockyard ps
step "curl http://localhost:$PORT"
for _ in $(seq 50); do curl -fsS "http://localhost:$PORT" >/dev/null 2>&1 && break; sleep 0.1; done
curl -fsS "http://localhost:$PORT"
run dockyard agents
run dockyard stop kuard
run dockyard rm kuard
run dockyard rmi kuard-amd64:1 "$REG/kuar-demo/kuard-amd64:1"
run dockyard gc run --dry-run
run dockyard images
printf '\n\033[1mdemo finished: built, pushed, ran, answered, cleaned up\033[0m\n'
