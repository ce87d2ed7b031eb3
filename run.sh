#!/usr/bin/env bash
# gpt-oss-harmony-groq: one OpenAI endpoint for gpt-oss (harmony via a Transformers server) and Groq.
#
#   ./run.sh [mitmdump args…]    set up .venv if needed, then run the proxy (mitmdump) in the foreground
#   ./run.sh web [mitmweb args…] the same with mitmweb (inspect traffic in the browser)
#   ./run.sh test [pytest args…] set up everything the tests need and run the whole suite (in
#                                parallel; `-n 0` runs it in one process)
#   ./run.sh prepare MODEL       make a harmony-ready copy of a gpt-oss model folder or hub id
#   ./run.sh serve MODEL [args…] prepare MODEL, start `transformers serve` on it, then the proxy
#   ./run.sh bench [args…]       run the benchmarks (bench/README.md)
#   ./run.sh keys add|list|revoke|rotate …  keys per person (docs/keys.md)
#   ./run.sh usage [--by key|model|route]   usage from the flow log (docs/keys.md)
#
# Settings come from the environment (docs/settings.md); PYTHON=/path/to/python3.12+ picks the
# interpreter used to create .venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="${VENV:-$ROOT/.venv}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-3307}"
TRANSFORMERS_URL="${TRANSFORMERS_URL:-http://localhost:8000}"
export HOST PORT TRANSFORMERS_URL

die() { echo "run.sh: $*" >&2; exit 1; }

python_ok() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' 2>/dev/null; }

find_python() {
  if [[ -n "${PYTHON:-}" ]]; then
    python_ok "$PYTHON" || die "PYTHON=$PYTHON is not Python >= 3.12 (mitmproxy 12 needs 3.12+)."
    echo "$PYTHON"; return
  fi
  local candidate
  for candidate in python3.13 python3.12 python3 \
      "$HOME"/.pyenv/versions/3.13*/bin/python "$HOME"/.pyenv/versions/3.12*/bin/python \
      /usr/local/bin/python3.1[2-9] /usr/bin/python3.1[2-9]; do
    if command -v "$candidate" >/dev/null 2>&1 && python_ok "$(command -v "$candidate")"; then
      command -v "$candidate"; return
    fi
  done
  die "no Python >= 3.12 found (mitmproxy 12 needs it). Install one, e.g.
  Debian/Ubuntu: sudo apt-get install python3.12 python3.12-venv
  pyenv:         pyenv install 3.12
then run again, or point PYTHON=/path/to/python3.12 at it."
}

ensure_venv() {
  # ensure_venv [test]: the project installed into $VENV, with the test extras if asked.
  # A stamp per pyproject.toml hash keeps repeat runs instant; a test install serves both.
  local extras="${1:-}" hash target
  if [[ ! -x "$VENV/bin/python" ]]; then
    local py; py="$(find_python)"
    echo "run.sh: creating $VENV with $("$py" --version 2>&1)" >&2
    "$py" -m venv "$VENV" || die "could not create $VENV (on Debian: apt-get install python3.12-venv)"
  fi
  hash="$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
  [[ -f "$VENV/.installed-$hash-test" ]] && return
  [[ -z "$extras" && -f "$VENV/.installed-$hash-base" ]] && return
  target="$ROOT"; [[ -n "$extras" ]] && target="$ROOT[$extras]"
  echo "run.sh: installing the project into $VENV" >&2
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e "$target" \
    || die "pip install failed (see above)"
  touch "$VENV/.installed-$hash-${extras:-base}"
}

given_options() {
  # given_options ARGS…: the option names the user's own arguments set, one per line:
  # `--set name[=value]`, `--set=name[=value]` and mitmweb's --web-port/--web-host/--[no-]web-open-browser.
  local arg option previous=""
  for arg in "$@"; do
    [[ "$previous" == "--set" ]] && echo "${arg%%=*}"
    case "$arg" in
      --set=*) option="${arg#--set=}"; echo "${option%%=*}" ;;
      --web-port|--web-port=*) echo web_port ;;
      --web-host|--web-host=*) echo web_host ;;
      --web-open-browser|--no-web-open-browser) echo web_open_browser ;;
    esac
    previous="$arg"
  done
}

defaults=()
add_defaults() {
  # add_defaults NAME=VALUE…: `--set NAME=VALUE` into $defaults for each option the user did not
  # set (mitmproxy stops at an option given twice; a list option such as web_columns would grow).
  local pair
  for pair in "$@"; do
    grep -qxF -- "${pair%%=*}" <<<"$given" || defaults+=(--set "$pair")
  done
}

reverse_target() {
  # The first URL of TRANSFORMERS_URL. mitmdump's reverse mode takes one server; a list of
  # replicas (and MODEL_SERVERS' groups) is the addon's pool, which routes every request itself.
  local url urls
  IFS=',' read -r -a urls <<<"$TRANSFORMERS_URL"
  for url in "${urls[@]}"; do
    url="${url//[[:space:]]/}"
    [[ -n "$url" ]] && { echo "$url"; return; }
  done
  die "TRANSFORMERS_URL='$TRANSFORMERS_URL' names no URL"
}

proxy_args() {
  # proxy_args USER_ARGS…: sets $proxy (the addon and the reverse proxy on $HOST:$PORT), $given
  # and $defaults. --mode is a list, so a user's --mode adds a listener rather than replacing it.
  given="$(given_options "$@")"
  local target; target="$(reverse_target)" || exit 1
  proxy=(-s "$ROOT/addons/harmony.py" --mode "reverse:$target@$HOST:$PORT")
  add_defaults connection_strategy=lazy
}

cmd="${1:-}"
case "$cmd" in
  test)
    shift
    ensure_venv test
    export PATH="$VENV/bin:$PATH"
    cd "$ROOT"
    # In parallel (pytest-xdist), unless the user's own arguments turn it off (-n 0, -p no:xdist);
    # a module at a time per worker, in the suite's own order (tests/suite_plan.py).
    parallel=(-n auto --dist loadscope --no-loadscope-reorder)
    [[ " $* " == *" no:xdist "* || " $* " == *" -pno:xdist "* ]] && parallel=()
    exec "$VENV/bin/python" -m pytest "${parallel[@]}" "$@"
    ;;
  web)
    shift
    ensure_venv
    proxy_args "$@"
    add_defaults web_port="${WEB_PORT:-8081}" web_open_browser=false
    if ! grep -qxF web_columns <<<"$given"; then
      # mitmweb's default flow list columns plus the addon's per-flow comment
      for column in tls icon path method status size time comment; do
        defaults+=(--set "web_columns=$column")
      done
    fi
    ui="http://127.0.0.1:${WEB_PORT:-8081}/"
    grep -qxF web_port <<<"$given" && ui="the web_port you set"
    echo "run.sh: mitmweb UI at $ui (proxy on http://$HOST:$PORT/v1);" \
      "open the 'Web server listening at' URL below: its ?token= logs you in (docs/mitmweb.md)" >&2
    exec "$VENV/bin/mitmweb" "${proxy[@]}" "${defaults[@]}" "$@"
    ;;
  prepare)
    shift
    ensure_venv
    exec "$VENV/bin/harmony-groq-prepare" "$@"
    ;;
  serve)
    shift
    exec "$ROOT/scripts/serve.sh" "$@"
    ;;
  keys|usage)
    ensure_venv
    PYTHONPATH="$ROOT/addons${PYTHONPATH:+:$PYTHONPATH}" exec "$VENV/bin/python" -m harmony_groq.keys "$@"
    ;;
  bench)
    shift
    ensure_venv test
    exec "$VENV/bin/python" "$ROOT/bench/run.py" "$@"
    ;;
  *)
    ensure_venv
    echo "run.sh: proxy on http://$HOST:$PORT/v1 (gpt-oss -> ${MODEL_SERVERS:+$MODEL_SERVERS, then }$TRANSFORMERS_URL, others -> Groq)" >&2
    proxy_args "$@"
    exec "$VENV/bin/mitmdump" "${proxy[@]}" "${defaults[@]}" "$@"
    ;;
esac
