#!/usr/bin/env bash
# Build the slimops component image with podman, with no Docker engine and no image registry: a Debian base made
# with debootstrap, Python packages from a wheelhouse prepared on the host. This is also the air-gapped build
# (infra/container/README.md): run `prepare` where the network is, carry the build directory over, run `image`.
#
#   infra/container/build.sh [all|prepare|image]
#     prepare  needs a Debian mirror and the Python package index: base rootfs tarball + wheelhouse + slimops wheel
#     image    needs no network: imports the base, builds the image from the wheelhouse, writes image.json
#     all      (default) prepare what is missing or stale, then image
#
# Idempotent: a base image (or its rootfs tarball) that exists is reused; a wheelhouse that already satisfies the
# dependencies is reused (it is resolved offline first); podman's layer cache skips the unchanged layers.
# Settings (environment): SLIMOPS_BUILD_DIR, SLIMOPS_IMAGE_NAME, SLIMOPS_BASE_IMAGE, DEBIAN_MIRROR, PYTHON,
# SLIMOPS_IMAGE_LOCK, SLIMOPS_CONSTRAINTS, SLIMOPS_OCI_RUNTIME.
set -Eeuo pipefail
# No silent exits: say which command failed.
trap 'printf "build.sh: error: line %s failed: %s\n" "$LINENO" "$BASH_COMMAND" >&2' ERR

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
VERSION=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$REPO/pyproject.toml" | head -1)

BUILD_DIR=${SLIMOPS_BUILD_DIR:-$HERE/.build}
IMAGE=${SLIMOPS_IMAGE_NAME:-localhost/slimops:$VERSION}
BASE_IMAGE=${SLIMOPS_BASE_IMAGE:-localhost/slimops-base:bookworm}
PYTHON=${PYTHON:-python3}
LOCK_FILE=${SLIMOPS_IMAGE_LOCK:-$REPO/components/slimops/image.json}
# The resolved set the project's own venv is tested with: the image gets the same versions.
CONSTRAINTS=${SLIMOPS_CONSTRAINTS:-$REPO/infra/constraints.txt}

# Extras baked into the image: kfp so KFP's Python components run on it (install_kfp_package=False), registry
# (mlflow) so register/promote run inside a task, serve (starlette, uvicorn) for `slimops serve` on the hosting
# platforms, gcs (google-cloud-storage) so `slimops serve` under Vertex AI downloads its gs:// model, openvino (+ nncf)
# so `slimops serve` runs the OpenVINO IR that compile target auto may keep, datasets so a step in a pipeline
# reads `format: hf-dataset` data. Empty for the core alone.
IMAGE_EXTRAS=${SLIMOPS_IMAGE_EXTRAS-kfp,registry,serve,gcs,openvino,datasets}

BASE_TAR=$BUILD_DIR/base/bookworm-minbase.tar
WHEELHOUSE=$BUILD_DIR/wheelhouse
REQUIREMENTS=$BUILD_DIR/requirements.lock
# Fixed zip timestamps: the same sources give the same slimops wheel, so an unchanged tree hits the layer cache.
export SOURCE_DATE_EPOCH=315532800

# Here podman runs containers only with runc and explicit limits (crun and the default limits fail with
# "setrlimit ... Operation not permitted"); elsewhere runc is still a safe choice when it is installed.
RUNTIME=${SLIMOPS_OCI_RUNTIME:-$(command -v runc >/dev/null 2>&1 && echo runc || true)}
PODMAN=(podman ${RUNTIME:+--runtime "$RUNTIME"})
ULIMITS=(--ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

log() { printf '[build.sh %4ss] %s\n' "$SECONDS" "$*" >&2; }
die() { printf 'build.sh: error: %s\n' "$*" >&2; exit 2; }

# This machine's pip configuration names index directories that do not exist; pip warns once per package.
quiet_pip() { grep -v 'is ignored: it is neither a file nor a directory' >&2 || true; }

constraint_args() { [[ -f $CONSTRAINTS ]] && printf '%s\n' --constraint "$CONSTRAINTS"; return 0; }

debian_mirror() {
    # The Debian mirror apt already uses on this machine (deb822 "URIs:" or one-line "deb URI suite" entries).
    if [[ -n ${DEBIAN_MIRROR:-} ]]; then echo "$DEBIAN_MIRROR"; return; fi
    local uri
    uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources 2>/dev/null \
          | grep -E '^[[:space:]]*(URIs:|deb )' | grep -oE 'https?://[^[:space:]]*/debian/?([[:space:]]|$)' \
          | head -1 | tr -d '[:space:]' || true)
    echo "${uri:-http://deb.debian.org/debian}"
}

check_python() {
    # Wheels are chosen for the interpreter that resolves them: it must be the image's (Debian bookworm: 3.11).
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null \
        || die "PYTHON=$PYTHON is not Python 3.11 (the image's python3, Debian bookworm); set PYTHON=python3.11"
}

make_base_tar() {
    command -v debootstrap >/dev/null \
        || die "no base rootfs at $BASE_TAR and debootstrap is not installed; install it (apt-get install debootstrap) or copy the tarball from a machine that ran '$0 prepare'"
    [[ $EUID -eq 0 ]] || die "debootstrap needs root: run 'sudo $0 prepare' once (it writes $BASE_TAR)"
    local mirror rootfs
    mirror=$(debian_mirror)
    mkdir -p "$(dirname "$BASE_TAR")"
    rootfs=$(mktemp -d "$(dirname "$BASE_TAR")/rootfs.XXXXXX")
    # shellcheck disable=SC2064  # expand now: the trap must remove this rootfs, even after the variable changes
    trap "remove_rootfs '$rootfs'" EXIT
    log "base: debootstrap --variant=minbase --include=python3,python3-venv bookworm from $mirror"
    debootstrap --variant=minbase --include=python3,python3-venv bookworm "$rootfs" "$mirror" >"$BUILD_DIR/debootstrap.log" 2>&1 \
        || die "debootstrap failed (log: $BUILD_DIR/debootstrap.log); check that $mirror is reachable or set DEBIAN_MIRROR"
    # The package cache and lists are ~95 MB the image never uses (nothing is apt-installed later).
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar --numeric-owner -C "$rootfs" -cf "$BASE_TAR.tmp" .
    mv "$BASE_TAR.tmp" "$BASE_TAR"
    remove_rootfs "$rootfs"
    trap - EXIT
    log "base: rootfs tarball $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
}

remove_rootfs() {
    # debootstrap mounts proc/sys inside the rootfs while it works; never delete through a mount.
    local rootfs=$1 mount
    { grep -F " $rootfs/" /proc/mounts || true; } | cut -d' ' -f2 | sort -r | while read -r mount; do umount "$mount" || true; done
    rm -rf --one-file-system "$rootfs"
}

ensure_base_image() {
    if "${PODMAN[@]}" image exists "$BASE_IMAGE"; then
        log "base: image $BASE_IMAGE present, reused"
        return
    fi
    [[ -f $BASE_TAR ]] || make_base_tar
    log "base: podman import $BASE_TAR $BASE_IMAGE"
    "${PODMAN[@]}" import --quiet --change 'CMD ["/bin/bash"]' "$BASE_TAR" "$BASE_IMAGE" >/dev/null
}

build_slimops_wheel() {
    # From a clean copy of what the wheel is made of: no stale build/ tree from another build, and no image.json
    # (the lock of a previous image has no place inside the next one).
    local src
    src=$(mktemp -d)
    tar -C "$REPO" --exclude=__pycache__ --exclude='*.egg-info' --exclude=components/slimops/image.json \
        -cf - pyproject.toml README.md components | tar -C "$src" -xf -
    [[ -f $REPO/LICENSE ]] && cp "$REPO/LICENSE" "$src/"
    mkdir -p "$WHEELHOUSE"
    rm -f "$WHEELHOUSE"/slimops-*.whl
    # Offline first: the build backend (setuptools) is kept in the wheelhouse for exactly this.
    if ! "$PYTHON" -m pip wheel --quiet --no-deps --no-index --find-links "$WHEELHOUSE" --wheel-dir "$WHEELHOUSE" "$src" >/dev/null 2>&1; then
        "$PYTHON" -m pip wheel --quiet --no-deps --wheel-dir "$WHEELHOUSE" "$src" 2>&1 | quiet_pip \
            || die "pip could not build the slimops wheel (output above)"
    fi
    rm -rf "$src"
    log "wheel: $(basename "$WHEELHOUSE"/slimops-*.whl)"
}

deps_key() {
    # What the resolution depends on: slimops' requirements, the constraints and the wheels at hand. While they
    # are unchanged the previous requirements.lock still holds and the (slow) resolution is skipped.
    "$PYTHON" - "$WHEELHOUSE" "$CONSTRAINTS" "${IMAGE_EXTRAS:-}" <<'EOF'
import hashlib
import pathlib
import sys
import zipfile

wheelhouse, constraints = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(wheel,) = wheelhouse.glob("slimops-*.whl")
with zipfile.ZipFile(wheel) as archive:
    metadata = archive.read(next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))).decode()
key = hashlib.sha256()
key.update("\n".join(line for line in metadata.splitlines() if line.startswith("Requires-Dist:")).encode())
key.update(constraints.read_bytes() if constraints.is_file() else b"")
key.update(sys.argv[3].encode())  # the extras baked in
key.update("\n".join(sorted(p.name for p in wheelhouse.glob("*.whl") if not p.name.startswith("slimops-"))).encode())
print(key.hexdigest())
EOF
}

resolve_requirements() {
    # Exactly what the image installs, resolved from the wheelhouse alone (--isolated: no pip config, no extra
    # find-links or index from this machine), so the container's offline install cannot go differently.
    local wheel report
    wheel=$(ls "$WHEELHOUSE"/slimops-*.whl)${IMAGE_EXTRAS:+[$IMAGE_EXTRAS]}
    report=$(mktemp)
    mapfile -t constraints < <(constraint_args)
    if ! "$PYTHON" -m pip install --isolated --quiet --dry-run --ignore-installed --no-index --find-links "$WHEELHOUSE" \
            "${constraints[@]}" --report "$report" "$wheel" >/dev/null 2>&1; then
        rm -f "$report"
        return 1
    fi
    "$PYTHON" - "$report" >"$REQUIREMENTS.tmp" <<'EOF'
import json
import sys

report = json.load(open(sys.argv[1]))
print("# The slimops image's dependencies, resolved from the wheelhouse by infra/container/build.sh.")
for item in sorted(report["install"], key=lambda i: i["metadata"]["name"].lower()):
    meta = item["metadata"]
    if meta["name"].lower() != "slimops":
        print(f"{meta['name']}=={meta['version']}")
EOF
    rm -f "$report"
    if grep -qiE '^(nvidia-|triton)' "$REQUIREMENTS.tmp"; then
        rm -f "$REQUIREMENTS.tmp"
        die "the wheelhouse resolved a CUDA torch (nvidia-*/triton wheels); put the torch==2.13.0 CPU wheel in $WHEELHOUSE (e.g. pip download torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu --no-deps -d $WHEELHOUSE) and remove the nvidia-*/triton wheels"
    fi
    mv "$REQUIREMENTS.tmp" "$REQUIREMENTS"
}

fill_wheelhouse() {
    local key
    key=$(deps_key)
    if [[ -f $REQUIREMENTS && -f $REQUIREMENTS.key && $(cat "$REQUIREMENTS.key") == "$key" ]]; then
        log "wheelhouse: dependencies unchanged, reused with $(basename "$REQUIREMENTS")"
        return
    fi
    # Offline first: a wheelhouse that already holds every dependency is reused as it is.
    if resolve_requirements; then
        log "wheelhouse: $WHEELHOUSE satisfies the dependencies, reused"
    else
        log "wheelhouse: fetching the dependencies into $WHEELHOUSE (network)"
        mapfile -t constraints < <(constraint_args)
        # setuptools too: it is the build backend, so the slimops wheel can be rebuilt offline.
        "$PYTHON" -m pip wheel --quiet --find-links "$WHEELHOUSE" --wheel-dir "$WHEELHOUSE" "${constraints[@]}" \
            "$(ls "$WHEELHOUSE"/slimops-*.whl)${IMAGE_EXTRAS:+[$IMAGE_EXTRAS]}" 'setuptools>=77' 2>&1 | quiet_pip \
            || die "pip could not fill the wheelhouse (output above); check that the package index is reachable"
        log "wheelhouse: $(ls "$WHEELHOUSE" | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"
        resolve_requirements || die "the wheelhouse $WHEELHOUSE still misses a dependency after fetching; see pip's output above"
        key=$(deps_key)
    fi
    echo "$key" >"$REQUIREMENTS.key"
    log "requirements: $(grep -vc '^#' "$REQUIREMENTS") pinned dependencies ($(grep -i '^torch==' "$REQUIREMENTS"))"
}

build_image() {
    local context=$BUILD_DIR/context previous
    previous=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
    rm -rf "$context"
    mkdir -p "$context/dist"
    # Hard links: the wheelhouse (~400 MB) is bind-mounted into one RUN step, never copied into a layer.
    cp -al "$WHEELHOUSE" "$context/wheelhouse" 2>/dev/null || cp -a "$WHEELHOUSE" "$context/wheelhouse"
    mv "$context"/wheelhouse/slimops-*.whl "$context/dist/"
    cp "$REQUIREMENTS" "$context/requirements.lock"
    tar -C "$REPO" --exclude=__pycache__ -cf - examples | tar -C "$context" -xf -
    log "image: podman build -t $IMAGE (base $BASE_IMAGE${RUNTIME:+, runtime $RUNTIME}; log: $BUILD_DIR/podman-build.log)"
    # --network=none: the build must not need a network (the air-gapped promise); --pull=never: nor a registry.
    if ! "${PODMAN[@]}" build --layers --pull=never --network=none "${ULIMITS[@]}" ${RUNTIME:+--runtime "$RUNTIME"} \
            --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VERSION=$VERSION" \
            -f "$HERE/Containerfile" -t "$IMAGE" "$context" >"$BUILD_DIR/podman-build.log" 2>&1; then
        tail -n 30 "$BUILD_DIR/podman-build.log" >&2
        die "podman build failed (last lines above; whole log: $BUILD_DIR/podman-build.log)"
    fi
    rm -rf "$context"
    # The image this build replaced under the same tag, now untagged: remove it (its shared layers stay cached).
    if [[ -n $previous && $previous != $("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE") ]]; then
        "${PODMAN[@]}" rmi "$previous" >/dev/null 2>&1 || true
    fi
}

record_image() {
    local id digest size
    id=$("${PODMAN[@]}" image inspect --format '{{.Id}}' "$IMAGE")
    digest=$("${PODMAN[@]}" image inspect --format '{{.Digest}}' "$IMAGE")
    size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
    # slimops.plan.image_reference() reads this: compiled pipeline specs name the image by digest.
    printf '{"image": "%s", "digest": "%s"}\n' "$IMAGE" "$digest" >"$LOCK_FILE.tmp"
    mv "$LOCK_FILE.tmp" "$LOCK_FILE"
    log "image: done, recorded in $LOCK_FILE"
    printf 'image: %s\nid: %s\ndigest: %s\nsize: %s MB\n' "$IMAGE" "$id" "$digest" "$((size / 1000000))"
}

main() {
    local mode=${1:-all}
    case $mode in all | prepare | image) ;; *) die "unknown mode '$mode'; use all, prepare or image" ;; esac
    command -v podman >/dev/null || [[ $mode == prepare ]] || die "podman is not installed (apt-get install podman runc)"
    mkdir -p "$BUILD_DIR"
    # One build at a time per build directory (tests and users may start one concurrently).
    exec 9>"$BUILD_DIR/.lock"
    flock 9
    case $mode in
        prepare)
            check_python
            [[ -f $BASE_TAR ]] || make_base_tar
            build_slimops_wheel
            fill_wheelhouse
            ;;
        image)
            # Only podman here: the wheel and the lock come from 'prepare'.
            ls "$WHEELHOUSE"/slimops-*.whl >/dev/null 2>&1 && [[ -f $REQUIREMENTS ]] \
                || die "no prepared wheelhouse at $WHEELHOUSE (slimops wheel + $(basename "$REQUIREMENTS")); run '$0 prepare' where the network is and copy $BUILD_DIR here"
            ensure_base_image
            build_image
            record_image
            ;;
        all)
            check_python
            ensure_base_image
            build_slimops_wheel
            fill_wheelhouse
            build_image
            record_image
            ;;
    esac
}

main "$@"
