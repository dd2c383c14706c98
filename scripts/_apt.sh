# Sourced by scripts/install_*.sh: install Debian packages with apt-get, as root (or through sudo),
# with no prompts.
#
#     apt_install NAME PACKAGE...   # NAME prefixes the messages
#
# Exits 1 where there is no apt-get. The quiet install is tried first; when it fails it runs again
# with its output shown, to say why.
apt_install() {
    local name=$1
    shift
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "$name: no apt-get here; install yourself: $* (or their equivalents)" >&2
        exit 1
    fi
    local sudo=
    if [ "$(id -u)" -ne 0 ]; then
        sudo=sudo
    fi
    echo "$name: installing $*"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
        || $sudo apt-get install -y --no-install-recommends "$@"   # again, loudly, to show why
    echo "$name: done"
}
