# Shared by scripts/up and scripts/check: install what Stockade needs, idempotently.
# Sourced, not run. Needs root (or sudo) only for apt-get, and only when a package is missing.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV="$ROOT/.venv"

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
        echo "need root to run: $*" >&2; return 1; fi
}

apt_install() {
    # Installs the Debian packages given that are not installed yet.
    local missing=()
    for pkg in "$@"; do
        dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "ok installed" || missing+=("$pkg")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    echo "==> apt-get install ${missing[*]}"
    as_root apt-get update -q >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}

ensure_venv() {
    # Creates .venv and installs Stockade with the tested versions from constraints.txt.
    local stamp="$VENV/.installed"
    if [ ! -x "$VENV/bin/python" ]; then
        echo "==> creating $VENV"
        python3 -m venv "$VENV"
    fi
    if [ ! -f "$stamp" ] || [ "$ROOT/pyproject.toml" -nt "$stamp" ] || [ "$ROOT/constraints.txt" -nt "$stamp" ]; then
        echo "==> installing Stockade and its pinned dependencies into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        "$VENV/bin/python" -m pip install -q -c "$ROOT/constraints.txt" -e "$ROOT[dev]"
        touch "$stamp"
    fi
}

ensure_synapse() {
    # A real Synapse for the Matrix channel's tests, in its own virtualenv (its pins
    # would clash with ours); idempotent and quick once installed.
    "$ROOT/scripts/synapse-venv"
}

ensure_redis() {
    command -v redis-server >/dev/null || apt_install redis-server
    # Debian's package may start a system-wide server; Stockade and its tests run their own.
}

ensure_debootstrap() {
    # Builds the agent's offline base image when no registry base is configured.
    command -v debootstrap >/dev/null || apt_install debootstrap
}

ensure_e2fsprogs() {
    # Each agent's workspace is an ext4 image of its own size, loop-mounted on the host.
    PATH="$PATH:/usr/sbin:/sbin" command -v mkfs.ext4 >/dev/null || apt_install e2fsprogs
}

ensure_docker() {
    # The Docker engine runs the agents. Install Debian's docker.io when it is missing and
    # start dockerd in the background when no engine answers.
    command -v dockerd >/dev/null || apt_install docker.io
    if docker info >/dev/null 2>&1; then return 0; fi
    echo "==> starting dockerd"
    mkdir -p /var/log
    as_root sh -c 'nohup dockerd >/var/log/stockade-dockerd.log 2>&1 &'
    for _ in $(seq 1 60); do
        docker info >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "dockerd did not start; see /var/log/stockade-dockerd.log" >&2
    return 1
}
