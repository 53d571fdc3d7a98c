#!/bin/sh
# Make the image's base locally, where no image registry is reachable: a Debian bookworm root
# filesystem from Debian's own packages (debootstrap) with Python 3.11 and pip, imported as an
# image named $BASE (default fusionrec-base:bookworm). It stands in for python:3.11-slim-bookworm:
#
#   sh docker/make-base.sh                         # then
#   buildah bud --isolation chroot --build-arg PYTHON_IMAGE=fusionrec-base:bookworm ...
#
# `make image` runs this when no registry answers. Needs root, debootstrap and buildah.
set -eu
BASE="${BASE:-fusionrec-base:bookworm}"
MIRROR="${MIRROR:-http://deb.debian.org/debian}"
ROOT="${ROOTFS:-$(mktemp -d /tmp/fusionrec-rootfs.XXXXXX)}"

if buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    echo "make-base: $BASE exists already"
    exit 0
fi
echo "make-base: debootstrap bookworm into $ROOT (from $MIRROR)"
debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,python-is-python3,ca-certificates \
    bookworm "$ROOT" "$MIRROR" >"$ROOT.log" 2>&1 || { echo "make-base: debootstrap failed, see $ROOT.log" >&2; exit 1; }
# Like the official python image: pip may install into the system Python (the image is the
# environment), and apt's caches are not kept.
rm -f "$ROOT"/usr/lib/python3.*/EXTERNALLY-MANAGED
rm -rf "$ROOT"/var/lib/apt/lists/* "$ROOT"/var/cache/apt/*.bin
ctr=$(buildah from scratch)
buildah copy --quiet "$ctr" "$ROOT" / >/dev/null
buildah config --env LANG=C.UTF-8 --cmd python3 "$ctr"
buildah commit --quiet --rm "$ctr" "$BASE" >/dev/null
rm -rf "$ROOT" "$ROOT.log"
echo "make-base: $BASE: $(buildah inspect --type image --format '{{.FromImageID}}' "$BASE" 2>/dev/null | cut -c1-12)"
