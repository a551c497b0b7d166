#!/usr/bin/env bash
# The container image, tested for real with podman (as root; `.ci/run` runs it):
# build it, run it on volumes, append events, take a backup, read health through the
# image's own HEALTHCHECK, stop it (ordered shutdown, exit 0, WAL empty), start it
# again on the same volumes; plus the token requirement, --user and PUID/PGID, and a
# read-only root filesystem.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v curl >/dev/null || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# crun fails in sandboxes that mix cgroup versions; runc with cgroupfs works. Our own
# settings file, so the machine's is left alone.
conf=$(mktemp)
cat >"$conf" <<'CONF'
[containers]
default_ulimits = []
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
export CONTAINERS_CONF="$conf"
P=(podman --runtime runc)

ENGINE=podman contrib/build-image.sh

work=$(mktemp -d)
name=dbwarden-ci
remove_containers() {
  for c in "$name" "$name-puid" "$name-notoken"; do
    "${P[@]}" rm -f -v --ignore "$c" >/dev/null 2>&1 || true
  done
}
cleanup() {
  remove_containers
  rm -rf "$work" "$conf"
}
trap cleanup EXIT
remove_containers
fail() { echo "FAILED: $*" >&2; "${P[@]}" logs "$name" 2>&1 | tail -30 >&2 || true; exit 1; }

mkdir -p "$work/config" "$work/data" "$work/backups"
openssl rand -hex 16 >"$work/config/token" 2>/dev/null || head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/config/token"
token=$(cat "$work/config/token")
chown -R 65532:65532 "$work"
port=18686
api() { curl -fsS -H "X-Api-Key: $token" "$@"; }

start() {
  "${P[@]}" run -d --name "$name" --network host --read-only --stop-timeout 75 \
    -v "$work/config:/config" -v "$work/data:/data" -v "$work/backups:/backups" \
    -e DBWARDEN__API__LISTEN="0.0.0.0:$port" -e DBWARDEN__API__TOKEN_FILE=/config/token \
    localhost/dbwarden:latest >/dev/null
}
wait_healthy() {
  for _ in $(seq 100); do
    if "${P[@]}" healthcheck run "$name" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  fail "never healthy"
}

echo "== a release build has no crash VFS, and refuses the setting"
if grep -q DBWARDEN_CRASH_AT target/x86_64-unknown-linux-musl/release/dbwarden; then
  fail "the release binary contains the crash-simulating VFS"
fi
code=0
"${P[@]}" run --rm -e DBWARDEN__DATABASE__VFS=dbwarden-crash localhost/dbwarden:latest config check \
  >"$work/vfs.log" 2>&1 || code=$?
[ "$code" = 78 ] || fail "database.vfs accepted by a release build (exit $code)"
grep -q "database.vfs" "$work/vfs.log" || fail "the refusal does not name database.vfs"

echo "== run on volumes"
start
wait_healthy
[ "$("${P[@]}" exec "$name" /dbwarden --version | cut -d' ' -f1)" = dbwarden ] || fail "--version"
for i in $(seq 20); do
  api -H 'content-type: application/json' "http://127.0.0.1:$port/api/events" \
    -d "{\"aggregate_type\":\"corruption\",\"aggregate_id\":\"c$i\",\"event_type\":\"CorruptionDetected\",\"event_data\":{\"file_path\":\"/m/$i.mkv\"}}" >/dev/null
done
curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/api/stats/dashboard" | grep -qx 401 || fail "the token is required"
api -X POST "http://127.0.0.1:$port/api/backups" >/dev/null || fail "backup"
ls "$work/backups"/dbwarden-*.db >/dev/null || fail "no backup file"
[ "$(stat -c %u "$work/data/dbwarden.db")" = 65532 ] || fail "the database is not owned by 65532"
"${P[@]}" healthcheck run "$name" >/dev/null || fail "the HEALTHCHECK command says unhealthy"
[ "$("${P[@]}" exec "$name" /dbwarden healthcheck)" = healthy ] || fail "healthcheck output"

echo "== stop: ordered shutdown, exit 0, WAL empty"
"${P[@]}" stop "$name" >/dev/null
code=$("${P[@]}" inspect "$name" --format '{{.State.ExitCode}}')
[ "$code" = 0 ] || fail "exit code $code after podman stop"
# (Through a file: `grep -q` closing the pipe early would fail the pipeline.)
"${P[@]}" logs "$name" >"$work/run1.log" 2>&1
grep -q "dbwarden stopped" "$work/run1.log" || fail "no ordered shutdown in the log"
wal="$work/data/dbwarden.db-wal"
[ ! -s "$wal" ] || fail "the WAL has $(stat -c %s "$wal") bytes after the stop"

echo "== start again on the same volumes"
"${P[@]}" start "$name" >/dev/null
wait_healthy
total=$(api "http://127.0.0.1:$port/api/stats/dashboard" | sed -n 's/.*"total":\([0-9]*\).*/\1/p')
[ "$total" = 20 ] || fail "after the restart total is '$total', not 20"
"${P[@]}" logs "$name" >"$work/run2.log" 2>&1
if grep -q unclean_startup "$work/run2.log"; then fail "a clean stop was reported as unclean"; fi
"${P[@]}" stop "$name" >/dev/null
"${P[@]}" rm -v "$name" >/dev/null

echo "== without a token it refuses to start (exit 78)"
"${P[@]}" run --name "$name-notoken" --network host -v "$work/data:/data" \
  -e DBWARDEN__API__LISTEN="127.0.0.1:$((port + 1))" localhost/dbwarden:latest >"$work/notoken.log" 2>&1 && fail "started without a token"
code=$("${P[@]}" inspect "$name-notoken" --format '{{.State.ExitCode}}')
[ "$code" = 78 ] || fail "exit $code without a token, not 78"
grep -q "api.token" "$work/notoken.log" || fail "the refusal does not name api.token"

echo "== as root with PUID/PGID: files belong to that user"
mkdir -p "$work/puid/data" "$work/puid/backups"
chown 1234:4321 "$work/puid/data" "$work/puid/backups"
"${P[@]}" run -d --name "$name-puid" --network host --user 0:0 -e PUID=1234 -e PGID=4321 \
  -v "$work/puid/data:/data" -v "$work/puid/backups:/backups" \
  -e DBWARDEN__API__LISTEN="127.0.0.1:$((port + 2))" -e DBWARDEN__API__REQUIRE_TOKEN=false \
  localhost/dbwarden:latest >/dev/null
for _ in $(seq 100); do
  curl -fsS "http://127.0.0.1:$((port + 2))/api/health" >/dev/null 2>&1 && break
  sleep 0.2
done
[ "$(stat -c %u:%g "$work/puid/data/dbwarden.db")" = 1234:4321 ] || fail "the database is $(stat -c %u:%g "$work/puid/data/dbwarden.db"), not 1234:4321"
"${P[@]}" stop "$name-puid" >/dev/null

size=$("${P[@]}" image inspect localhost/dbwarden:latest --format '{{.Size}}')
echo "image localhost/dbwarden:latest: $size bytes"
echo "container image: all checks passed"
