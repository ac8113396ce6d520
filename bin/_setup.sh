# Sourced by bin/demo, bin/test, bin/bench: make .venv (or refresh it when
# setup.cfg / pyproject.toml changed since it was built), then activate it.
# One environment for every script: the package with its test and demo extras.
mntk_setup() {
  local extras="test,demo"
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  cd "$root" || return 1
  local py="${MNTK_PYTHON:-}"
  if [ -z "$py" ]; then
    for candidate in python3.11 python3 python; do
      if command -v "$candidate" >/dev/null 2>&1; then py="$candidate"; break; fi
    done
  fi
  [ -n "$py" ] || { echo "mntk: no python3 found; install Python 3.11" >&2; return 1; }
  local stamp_want
  stamp_want="$(cat setup.cfg pyproject.toml | sha256sum | cut -c1-16)-${extras}"
  local stamp_file=".venv/.mntk-setup"
  if [ ! -x .venv/bin/python ]; then
    echo "mntk: creating .venv with $py" >&2
    "$py" -m venv .venv || return 1
  fi
  if [ ! -f "$stamp_file" ] || ! grep -qxF -- "$stamp_want" "$stamp_file"; then
    echo "mntk: installing mntk[$extras] into .venv (first run takes a few minutes)" >&2
    .venv/bin/python -m pip install -q --upgrade pip >&2 || return 1
    .venv/bin/python -m pip install -q -e ".[$extras]" >&2 || return 1
    echo "$stamp_want" > "$stamp_file"
  fi
  # shellcheck disable=SC1091
  . .venv/bin/activate
  export TF_USE_LEGACY_KERAS=1
  export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
}
