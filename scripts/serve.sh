#!/usr/bin/env bash
# ./run.sh serve [MODEL] [transformers serve args…] [-- proxy args…]
#
# One command for a local gpt-oss: make the harmony-ready copy of MODEL (`./run.sh prepare`),
# start `transformers serve` on it at TRANSFORMERS_URL's host and port, wait for its /health,
# then run the proxy (`./run.sh`) in the foreground. Ctrl-C (or either process ending) stops both.
#
# MODEL            a gpt-oss model folder or a downloaded hub id (default: $TRANSFORMERS_MODEL_PATH)
# TRANSFORMERS_BIN the `transformers` executable (default: $TRANSFORMERS_VENV/bin/transformers,
#                  else the one on PATH); TRANSFORMERS_VENV defaults to .venv-transformers
# SERVE_START_TIMEOUT seconds to wait for the model to load (default 1800)
# Arguments before `--` go to `transformers serve` (e.g. --device cuda:0 --dtype bfloat16),
# those after it to mitmdump. Details: docs/real-server.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TRANSFORMERS_URL="${TRANSFORMERS_URL:-http://localhost:8000}"
TRANSFORMERS_VENV="${TRANSFORMERS_VENV:-$ROOT/.venv-transformers}"
MIN_TRANSFORMERS="5.6"
INSTALL_HELP="Install it on the GPU machine (NVIDIA driver and CUDA-capable GPU), e.g.:
  python3 -m venv $TRANSFORMERS_VENV
  $TRANSFORMERS_VENV/bin/pip install -U torch 'transformers[serving]>=$MIN_TRANSFORMERS' accelerate kernels
or point TRANSFORMERS_BIN at an existing \`transformers\` executable (docs/real-server.md)."

die() { echo "serve: $*" >&2; exit 1; }
say() { echo "serve: $*" >&2; }

usage() {
  sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

# -- arguments --------------------------------------------------------------------------------
model="${TRANSFORMERS_MODEL_PATH:-}"
if [[ $# -gt 0 && "$1" != -* ]]; then
  model="$1"; shift
fi
serve_args=() proxy_args=()
while [[ $# -gt 0 ]]; do
  if [[ "$1" == "--" ]]; then shift; proxy_args=("$@"); break; fi
  [[ "$1" == "-h" || "$1" == "--help" ]] && usage
  serve_args+=("$1"); shift
done
[[ -n "$model" ]] || { say "no model given (argument or TRANSFORMERS_MODEL_PATH)"; usage; }

# -- where the server listens: TRANSFORMERS_URL ------------------------------------------------
[[ "$TRANSFORMERS_URL" != *,* ]] || die "TRANSFORMERS_URL=$TRANSFORMERS_URL lists several replicas;
./run.sh serve starts one model server. Start each replica yourself, then run the proxy over them:
TRANSFORMERS_URL=$TRANSFORMERS_URL ./run.sh (docs/scaling.md)"
url_re='^http://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:([0-9]+))?/?$'
[[ "$TRANSFORMERS_URL" =~ $url_re ]] \
  || die "TRANSFORMERS_URL=$TRANSFORMERS_URL: to start the server here it must be http://HOST:PORT"
host="${BASH_REMATCH[1]}"
port="${BASH_REMATCH[3]:-80}"
tcp_host="${host#[}"; tcp_host="${tcp_host%]}"

# HTTP status of GET $1 on the server, or nothing if it does not answer (bash /dev/tcp only).
http_status() {
  local line=""
  { exec 3<>"/dev/tcp/$tcp_host/$port"; } 2>/dev/null || return 0
  printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$1" "$host" >&3
  read -r -t 5 line <&3 || true
  exec 3>&- 3<&-
  line="${line#HTTP/* }"
  echo "${line%% *}"
}

port_in_use() { { exec 3<>"/dev/tcp/$tcp_host/$port"; } 2>/dev/null && { exec 3>&- 3<&-; return 0; }; return 1; }

# -- the transformers executable ---------------------------------------------------------------
find_transformers() {
  if [[ -n "${TRANSFORMERS_BIN:-}" ]]; then
    [[ -x "$TRANSFORMERS_BIN" ]] || die "TRANSFORMERS_BIN=$TRANSFORMERS_BIN is not an executable."
    echo "$TRANSFORMERS_BIN"; return
  fi
  local venv_bin="$TRANSFORMERS_VENV/bin/transformers"
  if [[ -x "$venv_bin" ]]; then echo "$venv_bin"; return; fi
  if command -v transformers >/dev/null 2>&1; then command -v transformers; return; fi
  die "no \`transformers\` executable found (TRANSFORMERS_BIN, $venv_bin, PATH).
$INSTALL_HELP"
}

# Versions as seen by the interpreter named in the executable's #! line: "TRANSFORMERS TORCH ok|old".
VERSIONS_PY='
import importlib.metadata as md, re, sys
def version(name):
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return "none"
def numbers(v):
    return tuple(int(n) for n in re.findall(r"\d+", v)[:2])
t = version("transformers")
print(t, version("torch"), "ok" if t != "none" and numbers(t) >= numbers(sys.argv[1]) else "old")
'

# Refuse a transformers older than $MIN_TRANSFORMERS (no /v1/completions); warn about a CPU-only
# torch. An executable whose interpreter cannot be asked is not checked (the proxy's /health
# still reports a server without /v1/completions).
check_versions() {
  local shebang interpreter found=()
  IFS= read -r shebang <"$1" || return 0
  [[ "$shebang" == '#!'* ]] || return 0
  read -r -a interpreter <<<"${shebang#\#!}"
  read -r -a found <<<"$("${interpreter[@]}" -c "$VERSIONS_PY" "$MIN_TRANSFORMERS" 2>/dev/null)" \
    || true
  if [[ ${#found[@]} -ne 3 || "${found[0]}" == none ]]; then
    say "could not tell the transformers version of $1"; return 0
  fi
  say "transformers ${found[0]}, torch ${found[1]} ($1)"
  [[ "${found[2]}" == ok ]] || die "transformers ${found[0]} at $1 is too old: gpt-oss needs \
POST /v1/completions, added in transformers $MIN_TRANSFORMERS. Upgrade it:
  ${interpreter[*]} -m pip install -U 'transformers[serving]>=$MIN_TRANSFORMERS'"
  if [[ "${found[1]}" == *+cpu* && " ${serve_args[*]} " != *" cpu "* ]]; then
    say "WARNING: torch ${found[1]} is a CPU-only build, so gpt-oss would run on the CPU (very
  slow; pass --device cpu to mean it). For the GPU: ${interpreter[*]} -m pip install -U \
--force-reinstall torch"
  fi
}

transformers_bin="$(find_transformers)"
check_versions "$transformers_bin"
if port_in_use; then
  die "something already listens on $host:$port (TRANSFORMERS_URL=$TRANSFORMERS_URL). Stop it, or
use it with plain \`./run.sh\`, or pick a free port: TRANSFORMERS_URL=http://127.0.0.1:8001"
fi

# -- prepare, serve, wait ----------------------------------------------------------------------
prepared="$("$ROOT/run.sh" prepare "$model" | tail -n 1)"
[[ -d "$prepared" ]] || die "preparing $model failed (see above)"

server_pid="" proxy_pid=""
# shellcheck disable=SC2317  # called by the EXIT trap
stop_all() {
  local pids=() pid
  trap - EXIT INT TERM
  for pid in "$proxy_pid" "$server_pid"; do [[ -n "$pid" ]] && pids+=("$pid"); done
  [[ ${#pids[@]} -gt 0 ]] || return 0
  kill -TERM "${pids[@]}" 2>/dev/null || true
  for _ in $(seq 150); do  # up to 30 s for a graceful stop (the model server frees the GPU)
    kill -0 "${pids[@]}" 2>/dev/null || break
    sleep 0.2
  done
  kill -KILL "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

say "starting: $transformers_bin serve $prepared --host $host --port $port ${serve_args[*]}"
"$transformers_bin" serve "$prepared" --host "$host" --port "$port" "${serve_args[@]}" &
server_pid=$!

timeout_s="${SERVE_START_TIMEOUT:-1800}"
started=$SECONDS noted=$SECONDS
until [[ "$(http_status /health)" == "200" ]]; do
  kill -0 "$server_pid" 2>/dev/null || { server_pid=""
    die "transformers serve exited before it was ready (see its output above)."; }
  (( SECONDS - started < timeout_s )) \
    || die "transformers serve not ready after $timeout_s s (SERVE_START_TIMEOUT)."
  if (( SECONDS - noted >= 30 )); then
    noted=$SECONDS; say "still loading the model ($((SECONDS - started)) s)…"
  fi
  sleep 0.5
done
say "model server ready at $TRANSFORMERS_URL after $((SECONDS - started)) s"

# The server is pinned to the prepared folder and rejects any other model id: send none.
export TRANSFORMERS_MODEL=""
"$ROOT/run.sh" "${proxy_args[@]}" &
proxy_pid=$!

status=0
wait -n || status=$?  # the first of the two to end
if ! kill -0 "$server_pid" 2>/dev/null; then
  say "transformers serve stopped (status $status); stopping the proxy"
else
  say "the proxy stopped (status $status); stopping transformers serve"
fi
exit "$status"
