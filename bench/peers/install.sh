#!/bin/sh
# What the benchmark's peers need, on Debian 12, as root; idempotent.
#
#   Debian: docker.io (dockerd, containerd, runc; the engine the benchmark starts itself)
#           and runsc (gVisor, a 2022 build).
#   PyPI:   llm-sandbox (with its Docker SDK extra) and epicbox, in bench/.venv-peers, a venv of
#           their own made with /usr/bin/python3: the project's .venv is not touched.
#
# On a host where apt starts services, the docker.io package would start and enable the
# system's docker.service (its own bridge and iptables rules): a policy-rc.d of ours denies that
# for the length of the install, if the host has none. The benchmark never uses a system docker.
set -eu

here=$(cd "$(dirname "$0")" && pwd)
venv="$(dirname "$here")/.venv-peers"

if [ "$(id -u)" -ne 0 ]; then
    echo "install.sh: run as root" >&2
    exit 1
fi

missing=""
for pkg in docker.io runsc; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $pkg"
    fi
done
if [ -n "$missing" ]; then
    policy=/usr/sbin/policy-rc.d
    ours=""
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        ours=1
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -q
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
    if [ -n "$ours" ]; then
        rm -f "$policy"
        trap - EXIT
    fi
fi

if [ ! -x "$venv/bin/python" ]; then
    /usr/bin/python3 -m venv "$venv"
fi
# Pinned to the versions these peers were written against. epicbox 1.1.0 passes
# Retry(method_whitelist=...) to urllib3, which urllib3 2 no longer accepts: urllib3 < 2.
"$venv/bin/python" -m pip install -q --disable-pip-version-check \
    'llm-sandbox[docker]==0.3.46' 'epicbox==1.1.0' 'urllib3<2'
echo "peers: docker.io, runsc and $venv ready"
