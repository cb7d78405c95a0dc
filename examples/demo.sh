#!/usr/bin/env bash
# The whole pipeline on one machine: start the stack, push an image with skopeo, pull it back.
# Run through `make demo` (which installs everything first).
set -euo pipefail
cd "$(dirname "$0")/.."
DY=".venv/bin/dockyard"
DEMO="$PWD/.demo"
export DOCKYARD_DATA_DIR="$DEMO/data"
export DOCKYARD_REGISTRY_ADDR="${DOCKYARD_REGISTRY_ADDR:-127.0.0.1:5000}"
export DOCKER_CONFIG="$DEMO/docker-config"
REG="$DOCKYARD_REGISTRY_ADDR"
rm -rf "$DEMO/work" && mkdir -p "$DEMO/work" "$DOCKYARD_DATA_DIR"

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

step "dockyard up (embedded NATS on a free port, every service as its own process)"
$DY up --nats-port 0 > "$DEMO/up.log" 2>&1 &
UP=$!
trap 'kill -TERM $UP 2>/dev/null; wait $UP 2>/dev/null || true' EXIT
for _ in $(seq 300); do [ -f "$DOCKYARD_DATA_DIR/stack.json" ] && break; kill -0 $UP 2>/dev/null || { cat "$DEMO/up.log"; exit 1; }; sleep 0.1; done
[ -f "$DOCKYARD_DATA_DIR/stack.json" ] || { echo "stack did not start"; cat "$DEMO/up.log"; exit 1; }
export DOCKYARD_NATS_URL=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["nats_url"])' "$DOCKYARD_DATA_DIR/stack.json")
cat "$DEMO/up.log"
$DY status
PW=$(cat "$DOCKYARD_DATA_DIR/admin-password")

step "make a busybox image as an OCI layout (no public registry here)"
.venv/bin/python examples/busybox.py oci-layout "$DEMO/work/layout" 1.0

step "skopeo copy it into dockyard (as admin)"
skopeo copy -q --dest-tls-verify=false --dest-creds "admin:$PW" oci:"$DEMO/work/layout":1.0 docker://$REG/demo/busybox:1.0
skopeo inspect --tls-verify=false --creds "admin:$PW" docker://$REG/demo/busybox:1.0 | head -12
skopeo list-tags --tls-verify=false --creds "admin:$PW" docker://$REG/demo/busybox

step "pull it back and compare digests"
skopeo copy -q --src-tls-verify=false --src-creds "admin:$PW" docker://$REG/demo/busybox:1.0 oci:"$DEMO/work/pulled":1.0
a=$(skopeo inspect --raw oci:"$DEMO/work/layout":1.0 | sha256sum | cut -c1-64)
b=$(skopeo inspect --raw oci:"$DEMO/work/pulled":1.0 | sha256sum | cut -c1-64)
echo "pushed manifest sha256:$a"; echo "pulled manifest sha256:$b"
[ "$a" = "$b" ] && echo "round trip OK"

step "stop the stack"
kill -TERM $UP; wait $UP; trap - EXIT
echo "demo finished"
