#!/usr/bin/env bash
# Set up everything watchkeep needs on this machine: Debian packages (when root) and a
# virtual environment in .venv with the locked Python dependencies. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
extras=${WATCHKEEP_EXTRAS:-test,dev}

install_debian_packages() {
    local wanted=() missing=() line name version
    while read -r line; do
        line=${line%%#*}; line=${line//[[:space:]]/}
        [ -n "$line" ] && wanted+=("$line")
    done < requirements/debian.txt
    for line in "${wanted[@]}"; do
        name=${line%%=*}
        dpkg-query -W -f='${Status}' "$name" 2>/dev/null | grep -q "install ok installed" || missing+=("$line")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "setup: missing Debian packages: ${missing[*]%%=*}; install them with apt-get as root" >&2
        return 1
    fi
    echo "setup: installing ${missing[*]}" >&2
    apt-get update -qq
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
        echo "setup: pinned versions are gone from the archive; installing the newest of ${missing[*]%%=*}" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]%%=*}"
    fi
}

install_debian_packages

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.watchkeep-installed
# The compiled part (setup.py) is built by the install: a change to its source installs again.
want="$(cat pyproject.toml setup.py src/watchkeep/media/*.c requirements/lock.txt | sha256sum | cut -d' ' -f1) $extras"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip==26.3"
    .venv/bin/python -m pip install -q --disable-pip-version-check -c requirements/lock.txt -e ".[${extras}]"
    echo "$want" > "$stamp"
fi

# sslyze (tests/security) pins cryptography<47, older than ours: a virtual environment of its own.
if [ ! -x .venv-sslyze/bin/python ]; then
    "$PYTHON" -m venv .venv-sslyze
fi
stamp=.venv-sslyze/.watchkeep-installed
want="$(sha256sum requirements/sslyze.txt | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    .venv-sslyze/bin/python -m pip install -q --disable-pip-version-check --upgrade "pip==26.3"
    .venv-sslyze/bin/python -m pip install -q --disable-pip-version-check -r requirements/sslyze.txt
    echo "$want" > "$stamp"
fi
