#!/usr/bin/env bash
# Run the real iii SDK clients (PyPI iii-sdk, npm iii-sdk, crates.io iii-sdk) against a
# chanrelay binary.
#
#   tests/sdk/run.sh            # from the repo root, after `cargo build`
#
# Env:
#   CHANRELAY_BIN        relay binary (default: target/debug/chanrelay)
#   CHANRELAY_SDK_SKIP_INSTALL=1   never touch the registries (fail if deps are missing)
#   CHANRELAY_SDK_PYTHON python used to create the venv (default: python3)
#   CHANRELAY_SDK_ONLY   comma list of case names to run (see the scripts)
#   CHANRELAY_SDK_SKIP   comma list of case names to skip
#   CHANRELAY_WS / CHANRELAY_CONTROL  if both set, test that running relay instead of starting one
#                        (with CHANRELAY_SIGNING_SECRET = its signing_secret for the minted-refs cases)
#                        wss:// and https:// work: trust a private CA with SSL_CERT_FILE (Python)
#                        and NODE_EXTRA_CA_CERTS (Node)
#   CHANRELAY_SDK_NODE_ID  node id the minted-refs cases mint for (a fleet behind a balancer:
#                        refs `<node>~…` reach that relay, which must have the signing_secret)
#
# Deps are installed once, project-locally: tests/sdk/node_modules (npm ci, from
# package-lock.json) and tests/sdk/.venv (pip, pinned in requirements.txt). Both are gitignored.
# The Rust SDK suite (tests/sdk/rust, its own workspace and Cargo.lock) is built with cargo
# into target/sdk-rust.
set -euo pipefail

SDK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$SDK_DIR/../.." && pwd)"
cd "$ROOT"

# Local connections only: never route the SDKs' 127.0.0.1 traffic through a proxy.
export NO_PROXY="127.0.0.1,localhost${NO_PROXY:+,$NO_PROXY}" no_proxy="127.0.0.1,localhost${no_proxy:+,$no_proxy}"

log() { echo "[sdk] $*" >&2; }

# ---------------------------------------------------------------- dependencies
install_deps() {
  local py="${CHANRELAY_SDK_PYTHON:-python3}"
  local want_py stamp
  want_py="$(cat "$SDK_DIR/requirements.txt")"
  stamp="$SDK_DIR/.venv/.chanrelay-installed"
  if [[ ! -x "$SDK_DIR/.venv/bin/python" || ! -f "$stamp" || "$(cat "$stamp")" != "$want_py" ]]; then
    [[ "${CHANRELAY_SDK_SKIP_INSTALL:-}" == 1 ]] && { log "python deps missing and CHANRELAY_SDK_SKIP_INSTALL=1"; return 1; }
    log "installing python iii-sdk into tests/sdk/.venv"
    rm -rf "$SDK_DIR/.venv"
    "$py" -m venv "$SDK_DIR/.venv"
    "$SDK_DIR/.venv/bin/python" -m pip install -q --disable-pip-version-check -r "$SDK_DIR/requirements.txt"
    echo "$want_py" > "$stamp"
  fi
  if [[ ! -f "$SDK_DIR/node_modules/.package-lock.json" || "$SDK_DIR/package-lock.json" -nt "$SDK_DIR/node_modules/.package-lock.json" || ! -d "$SDK_DIR/node_modules/iii-sdk" ]]; then
    [[ "${CHANRELAY_SDK_SKIP_INSTALL:-}" == 1 ]] && { log "node deps missing and CHANRELAY_SDK_SKIP_INSTALL=1"; return 1; }
    log "installing npm iii-sdk into tests/sdk/node_modules"
    (cd "$SDK_DIR" && npm ci --no-audit --no-fund --loglevel=error --ignore-scripts >/dev/null)
  fi
}

command -v node >/dev/null || { log "node not found"; exit 1; }
command -v npm >/dev/null || { log "npm not found"; exit 1; }
install_deps
log "building the Rust SDK suite (tests/sdk/rust)"
RUST_SDK_OFFLINE=()
[[ "${CHANRELAY_SDK_SKIP_INSTALL:-}" == 1 ]] && RUST_SDK_OFFLINE=(--offline)
CARGO_TARGET_DIR="$ROOT/target/sdk-rust" cargo build -q --locked "${RUST_SDK_OFFLINE[@]}" \
  --manifest-path "$SDK_DIR/rust/Cargo.toml"
export CHANRELAY_SDK_RUST_BIN="$ROOT/target/sdk-rust/debug/chanrelay-sdk-rust-test"

# ---------------------------------------------------------------- relay
RELAY_PID=""
# relay stdout/stderr go to a private dir under target/ (gitignored; not swept like /tmp/tmp.*)
mkdir -p "$ROOT/target"
TMP="$(mktemp -d "$ROOT/target/sdk-tests.XXXXXX")"
cleanup() {
  if [[ -n "$RELAY_PID" ]] && kill -0 "$RELAY_PID" 2>/dev/null; then
    kill -TERM "$RELAY_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$RELAY_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$RELAY_PID" 2>/dev/null || true
  fi
  rm -rf "$TMP"
}
trap cleanup EXIT

if [[ -n "${CHANRELAY_WS:-}" && -n "${CHANRELAY_CONTROL:-}" ]]; then
  WS="$CHANRELAY_WS"; CONTROL="$CHANRELAY_CONTROL"
  log "using running relay $WS / $CONTROL"
else
  # The relay started here has no node id: refs are minted without one.
  unset CHANRELAY_SDK_NODE_ID
  BIN="${CHANRELAY_BIN:-target/debug/chanrelay}"
  [[ -x "$BIN" ]] || { log "relay binary $BIN not found (cargo build first, or set CHANRELAY_BIN)"; exit 1; }
  # A signing secret, so refs minted by deploy/mint/ (no control API call) open channels.
  export CHANRELAY_SIGNING_SECRET="sdk-test-secret-$RANDOM-$RANDOM-$$"
  printf 'signing_secret = "%s"\n' "$CHANRELAY_SIGNING_SECRET" > "$TMP/config.toml"
  "$BIN" serve --config "$TMP/config.toml" --listen 127.0.0.1:0 --control 127.0.0.1:0 --shards 2 >"$TMP/out" 2>"$TMP/err" &
  RELAY_PID=$!
  DATA_ADDR=""; CONTROL_ADDR=""
  for _ in $(seq 100); do
    DATA_ADDR="$(sed -n 's/^chanrelay data listening on \([^ ]*\)$/\1/p' "$TMP/out" | head -1)"
    CONTROL_ADDR="$(sed -n 's/^chanrelay control listening on \([^ ]*\)$/\1/p' "$TMP/out" | head -1)"
    [[ -n "$DATA_ADDR" && -n "$CONTROL_ADDR" ]] && break
    kill -0 "$RELAY_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [[ -z "$DATA_ADDR" || -z "$CONTROL_ADDR" ]]; then
    log "relay did not print its two listening lines within 10s; stdout:"; cat "$TMP/out" >&2
    log "stderr (tail):"; tail -20 "$TMP/err" >&2
    exit 1
  fi
  WS="ws://$DATA_ADDR"; CONTROL="http://$CONTROL_ADDR"
  log "relay pid $RELAY_PID: $WS / $CONTROL"
fi

# ---------------------------------------------------------------- tests
rc=0
export CHANRELAY_SDK_REQUIRE_NODE=1
timeout -k 5 420 "$SDK_DIR/.venv/bin/python" "$SDK_DIR/sdk_test.py" "$WS" "$CONTROL" || rc=1
timeout -k 5 300 node "$SDK_DIR/sdk_test.mjs" "$WS" "$CONTROL" || rc=1
timeout -k 5 300 "$CHANRELAY_SDK_RUST_BIN" "$WS" "$CONTROL" || rc=1

if [[ -n "$RELAY_PID" ]] && ! kill -0 "$RELAY_PID" 2>/dev/null; then
  log "relay process died during the tests"; rc=1
fi
if [[ $rc -ne 0 && -n "$RELAY_PID" ]]; then
  log "relay stderr (tail):"; tail -30 "$TMP/err" >&2 || true
fi
[[ $rc -eq 0 ]] && log "all SDK tests passed" || log "SDK tests FAILED"
exit $rc
