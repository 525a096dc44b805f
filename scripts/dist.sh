#!/usr/bin/env bash
# Builds release archives of fluidity into dist/, with a SHA256SUMS file.
#
#   scripts/dist.sh [TARGET...]
#
# Without arguments it builds every supported target:
#   x86_64-unknown-linux-musl    cargo + musl-gcc (apt: musl-tools)              -> .tar.gz
#   aarch64-unknown-linux-musl   cargo zigbuild   (pip: ziglang cargo-zigbuild)  -> .tar.gz
#   x86_64-apple-darwin          cargo zigbuild                                  -> .tar.gz
#   aarch64-apple-darwin         cargo zigbuild                                  -> .tar.gz
#   x86_64-pc-windows-gnu        cargo + mingw-w64 (apt: gcc-mingw-w64-x86-64)   -> .zip
# Each archive, fluidity-VERSION-TARGET.{tar.gz,zip}, holds one folder of the same name with the binary, README.md,
# LICENSE, CHANGELOG.md and the example configs (configs/). The output folder ($DIST_DIR, by default dist/) is emptied
# first, so SHA256SUMS lists exactly the archives of this run; check them with `cd dist && sha256sum -c SHA256SUMS`.
# The rustup targets must be installed (`rustup target add TARGET`). Builds go to $CARGO_TARGET_DIR, by default
# target/cross, kept apart from the native target/ so cross builds stay incremental and do not disturb it.
# Archives are reproducible for a given commit: file times are the commit's time, owners are 0.
set -euo pipefail

ALL_TARGETS=(
    x86_64-unknown-linux-musl
    aarch64-unknown-linux-musl
    x86_64-apple-darwin
    aarch64-apple-darwin
    x86_64-pc-windows-gnu
)

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/cross}
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n 1)
[ -n "$version" ] || { echo "dist: no version in Cargo.toml" >&2; exit 1; }
epoch=${SOURCE_DATE_EPOCH:-$(git log -1 --format=%ct 2>/dev/null || date +%s)}
dist=$(mkdir -p "${DIST_DIR:-$root/dist}" && cd "${DIST_DIR:-$root/dist}" && pwd)
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")

build() {
    local target=$1
    case $target in
        x86_64-unknown-linux-musl)
            command -v musl-gcc >/dev/null || { echo "dist: $target needs musl-gcc (apt-get install musl-tools)" >&2; return 1; }
            CC_x86_64_unknown_linux_musl=musl-gcc cargo build --locked --release --bin fluidity --target "$target" ;;
        aarch64-unknown-linux-musl | *-apple-darwin)
            command -v cargo-zigbuild >/dev/null || { echo "dist: $target needs cargo-zigbuild (pip install ziglang cargo-zigbuild)" >&2; return 1; }
            cargo zigbuild --locked --release --bin fluidity --target "$target" ;;
        x86_64-pc-windows-gnu)
            command -v x86_64-w64-mingw32-gcc >/dev/null || { echo "dist: $target needs mingw-w64 (apt-get install gcc-mingw-w64-x86-64)" >&2; return 1; }
            cargo build --locked --release --bin fluidity --target "$target" ;;
        *)
            echo "dist: unknown target $target (known: ${ALL_TARGETS[*]})" >&2; return 1 ;;
    esac
}

package() {
    local target=$1 exe=fluidity
    [[ $target == *windows* ]] && exe=fluidity.exe
    local name=fluidity-$version-$target
    local stage=$staging/$name
    mkdir -p "$stage/configs"
    cp "$CARGO_TARGET_DIR/$target/release/$exe" "$stage/$exe"
    cp README.md LICENSE CHANGELOG.md "$stage/"
    cp configs/*.yaml "$stage/configs/"
    find "$stage" -exec touch -h -d "@$epoch" {} +
    if [[ $target == *windows* ]]; then
        (cd "$staging" && python3 - "$dist/$name.zip" "$name" <<'EOF'
import os, sys, time, zipfile
out, top = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
    for folder, dirs, files in os.walk(top):
        dirs.sort()
        for f in sorted(files):
            path = os.path.join(folder, f)
            info = zipfile.ZipInfo(path, time.gmtime(os.path.getmtime(path))[:6])
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            with open(path, "rb") as src:
                z.writestr(info, src.read())
EOF
        )
        echo "dist: $dist/$name.zip"
    else
        tar -C "$staging" --sort=name --owner=0 --group=0 --numeric-owner --mtime="@$epoch" -cf - "$name" \
            | gzip -n -9 > "$dist/$name.tar.gz"
        echo "dist: $dist/$name.tar.gz"
    fi
}

staging=$(mktemp -d)
trap 'rm -rf "$staging"' EXIT
rm -f "$dist"/fluidity-* "$dist"/SHA256SUMS
for target in "${targets[@]}"; do
    start=$SECONDS
    build "$target"
    package "$target"
    echo "dist: $target built and packaged in $((SECONDS - start)) s"
done
shopt -s nullglob
(cd "$dist" && archives=(*.tar.gz *.zip) && sha256sum -- "${archives[@]}" > SHA256SUMS)
echo "dist: $dist/SHA256SUMS"
cat "$dist/SHA256SUMS"
