#!/bin/sh
# Podman in place of a Docker engine, for `make image-test` on a machine that has neither a Docker
# engine nor a reachable image registry (run as root). Idempotent: each part is skipped when done.
#   1. Debian's podman, runc and debootstrap.
#   2. /etc/containers/containers.conf: runc as the runtime (crun fails on setrlimit in these
#      sandboxes) and no default ulimits (podman's default nofile limit cannot be set here either).
#   3. A local base image, NAME (default localhost/sidreasoner-base:bookworm), standing in for
#      python:3.11-slim, which cannot be pulled: Debian 12 minbase (Python 3.11) with a venv at
#      /opt/python first on PATH, so `python` and `pip` mean what they mean in the slim image.
# Exit status 3: podman cannot be set up here (the image test turns it into a skip with this output).
set -eu
BASE_IMAGE=${1:-localhost/sidreasoner-base:bookworm}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

cannot() { echo "podman-setup: $*" >&2; exit 3; }

if ! command -v podman >/dev/null || ! command -v runc >/dev/null || ! command -v debootstrap >/dev/null; then
    [ "$(id -u)" = 0 ] || cannot "podman, runc and debootstrap are missing and installing them needs root"
    command -v apt-get >/dev/null || cannot "podman, runc and debootstrap are missing and there is no apt-get"
    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman runc debootstrap; } \
        >/tmp/podman-setup-apt.log 2>&1 || cannot "apt-get install podman runc debootstrap failed (log: /tmp/podman-setup-apt.log)"
fi

CONF=/etc/containers/containers.conf
if ! grep -qs '^default_ulimits = \[\]' "$CONF"; then
    [ ! -s "$CONF" ] || cannot "$CONF exists without 'default_ulimits = []'; add it under [containers] and 'runtime = \"runc\"' under [engine]"
    mkdir -p /etc/containers
    printf '[containers]\ndefault_ulimits = []\n\n[engine]\nruntime = "runc"\n' >"$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
fi

podman info >/dev/null 2>&1 || cannot "podman info fails: $(podman info 2>&1 | tail -1)"

if podman image exists "$BASE_IMAGE"; then
    exit 0
fi
ROOTFS=$(mktemp -d /var/tmp/sidreasoner-base.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
echo "podman-setup: debootstrap bookworm into $ROOTFS (about a minute or two)"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$ROOTFS" "$MIRROR" \
    >/tmp/podman-setup-debootstrap.log 2>&1 || cannot "debootstrap failed (log: /tmp/podman-setup-debootstrap.log)"
chroot "$ROOTFS" python3 -m venv /opt/python
rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | podman import --quiet \
    --change 'ENV PATH=/opt/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python"]' \
    - "$BASE_IMAGE" >/dev/null
echo "podman-setup: imported $BASE_IMAGE"
