#!/bin/sh
# `make image [DEVICE=cpu|cuda] [IMAGE=name:tag]`: build docker/Dockerfile with docker where a
# daemon answers, else with buildah on a Debian bookworm base made here (docker/make-base.sh).
#
# With buildah, what this machine's own pip uses is passed to the build and mounted, never
# copied into the image: the directory in $PIP_FIND_LINKS (--find-links; then the CPU build does
# not ask PyTorch's index) and the CA bundle in $PIP_CERT (pip behind a TLS-intercepting proxy).
set -eu
DEVICE="${DEVICE:-cpu}"
IMAGE="${IMAGE:-fusionrec:$DEVICE}"

if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
    echo "image: building $IMAGE with docker"
    exec docker build -f docker/Dockerfile --build-arg DEVICE="$DEVICE" -t "$IMAGE" .
fi

need() {  # need COMMAND PACKAGE: install PACKAGE with apt-get when COMMAND is missing
    command -v "$1" >/dev/null 2>&1 && return 0
    echo "image: no docker daemon and no $1: installing $2 with apt-get"
    if ! { apt-get install -y -q "$2" >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q "$2" >/dev/null 2>&1; }; }; then
        echo "error: image: cannot install $2 with apt-get (needs root and a Debian package mirror); install docker or buildah" >&2
        exit 1
    fi
}
need buildah buildah
need debootstrap debootstrap

BASE="${BASE:-fusionrec-base:bookworm}"
BASE="$BASE" sh docker/make-base.sh

set -- --build-arg DEVICE="$DEVICE" --build-arg PYTHON_IMAGE="localhost/${BASE}"
if [ -n "${PIP_FIND_LINKS:-}" ] && [ -d "${PIP_FIND_LINKS}" ]; then
    set -- "$@" --volume "${PIP_FIND_LINKS}:/run/fusionrec-wheels:ro" \
        --build-arg PIP_EXTRA_ARGS="--find-links /run/fusionrec-wheels" \
        --build-arg TORCH_CPU_INDEX_URL="${TORCH_CPU_INDEX_URL-}"
fi
if [ -n "${PIP_CERT:-}" ] && [ -f "${PIP_CERT}" ]; then
    set -- "$@" --volume "${PIP_CERT}:/run/fusionrec-ca.crt:ro" --build-arg PIP_CERT=/run/fusionrec-ca.crt
fi
echo "image: building $IMAGE with buildah (base $BASE)"
buildah bud --isolation chroot -f docker/Dockerfile "$@" -t "$IMAGE" .
echo "image: $IMAGE: $(buildah images --format '{{.Size}}' "$IMAGE")"
