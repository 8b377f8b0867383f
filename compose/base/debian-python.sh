#!/bin/sh
# A python:3.11-slim stand-in made from Debian packages, for hosts that cannot pull from Docker Hub:
# debootstrap a minimal bookworm (its python3 is 3.11) and `docker import` it.
#   compose/base/debian-python.sh [IMAGE] [MIRROR]    (as root; needs debootstrap and a Docker engine)
# Then: make image BASE_IMAGE=IMAGE
set -eu
image=${1:-diffbus-base:bookworm}
mirror=${2:-http://deb.debian.org/debian}
root=$(mktemp -d /tmp/diffbus-base.XXXXXX)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates bookworm "$root" "$mirror"
chroot "$root" apt-get clean
rm -rf "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/locale/* \
    "$root"/var/cache/debconf/*-old "$root"/var/log/*.log
ln -sf python3 "$root"/usr/bin/python  # python:3.11-slim has `python`
tar -C "$root" -c . | docker import --change 'CMD ["python3"]' --change 'ENV LANG=C.UTF-8' - "$image"
echo "$image"
