#!/usr/bin/env bash
# Set up a fresh Debian 12 / Ubuntu 22.04+ host as root: apt packages, a virtual
# environment and an editable install. A second run checks and changes nothing.
#   scripts/bootstrap.sh          packages the agent needs
#   scripts/bootstrap.sh --test   plus the real servers, clients and reference tools the suite uses
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: run as root (it installs apt packages and loads eBPF programs)" >&2
    exit 1
fi

core=(make iproute2 libbpf1 libbpf-dev bpftool linux-libc-dev python3-venv python3-dev ca-certificates)
test_pkgs=(nmap p0f tshark tcpdump nginx-light openssh-server openssh-client redis-server
           redis-tools memcached dnsmasq-base curl postgresql postgresql-client ethtool
           qemu-system-x86 qemu-utils busybox-static cpio xz-utils zstd iputils-ping
           graphviz)

want=("${core[@]}")
[ "${1:-}" = "--test" ] && want+=("${test_pkgs[@]}")

apt_updated=0
apt_update_once() {
    if [ "$apt_updated" -eq 0 ]; then
        apt-get update -q >/dev/null
        apt_updated=1
    fi
}

# clang: the newest the distribution offers, 14 at least (clang-19 on Debian 12).
clang_pkg=""
for v in 19 18 17 16 15 14; do
    if command -v "clang-$v" >/dev/null 2>&1; then clang_pkg="clang-$v"; break; fi
done
if [ -z "$clang_pkg" ]; then
    apt_update_once
    for v in 19 18 17 16 15 14; do
        if apt-cache show "clang-$v" >/dev/null 2>&1; then clang_pkg="clang-$v"; break; fi
    done
fi
[ -n "$clang_pkg" ] || { echo "bootstrap: no clang >= 14 in this distribution's archive" >&2; exit 1; }
want+=("$clang_pkg" "llvm-${clang_pkg#clang-}")

missing=()
for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    apt_update_once
    echo "bootstrap: installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
fi

# Debian's services start on install; the suite runs its own instances in network namespaces.
for svc in nginx redis-server memcached postgresql ssh; do
    if systemctl is-active --quiet "$svc" 2>/dev/null; then systemctl stop "$svc" || true; fi
done

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
stamp=.venv/.netweave-installed
digest=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$digest" ]; then
    .venv/bin/pip install -q --upgrade pip
    .venv/bin/pip install -q -e '.[dev]'
    echo "$digest" > "$stamp"
fi
echo "bootstrap: ready ($clang_pkg, $(.venv/bin/python --version))"
