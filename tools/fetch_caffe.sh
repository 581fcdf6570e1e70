#!/usr/bin/env bash
# Fetch Caffe's Debian source package, verify it, unpack it and apply our
# patch series. The machine's own apt configuration is never touched: apt is
# pointed at a private sources dir and lists dir under the download dir.
#
# usage: fetch_caffe.sh SRC_DIR DOWNLOAD_DIR PATCH_DIR
set -euo pipefail

src_dir=$1 download_dir=$2 patch_dir=$3

version=1.0.0+git20180821.99bd997-8
suite=bullseye
orig=caffe_1.0.0+git20180821.99bd997.orig.tar.gz
orig_sha256=e0eb3f06794f7402c77b7dec8e8480273ee1a1bb192e9122b621a69d4147ad0c
debian=caffe_${version}.debian.tar.xz
debian_sha256=07cf073227494a6b07234e40cb5df91db566616593eef9baafdc4d06ad159f21
dsc=caffe_${version}.dsc

die() { echo "fetch_caffe: $*" >&2; exit 1; }

verified() {
  (cd "$download_dir" && [ -f "$orig" ] && [ -f "$debian" ] && [ -f "$dsc" ] &&
   printf '%s  %s\n%s  %s\n' "$orig_sha256" "$orig" "$debian_sha256" "$debian" |
   sha256sum --quiet -c - >/dev/null 2>&1)
}

mkdir -p "$download_dir"
if ! verified; then
  echo "fetch_caffe: downloading Debian source package caffe $version ($suite)"
  apt_dir="$download_dir/apt"
  mkdir -p "$apt_dir/sources.list.d" "$apt_dir/lists/partial"
  echo "deb-src http://deb.debian.org/debian $suite main" > "$apt_dir/sources.list.d/caffe-src.list"
  apt_opts=(-o Dir::Etc::SourceList=/dev/null
            -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
            -o "Dir::State::Lists=$apt_dir/lists"
            -o APT::Sandbox::User=root)
  apt-get "${apt_opts[@]}" -qq update || die "apt-get update of the $suite source index failed"
  (cd "$download_dir" && rm -f "$orig" "$debian" "$dsc" &&
   apt-get "${apt_opts[@]}" -qq source --download-only "caffe=$version") ||
    die "apt-get source caffe=$version failed"
  verified || die "checksum mismatch for $orig or $debian in $download_dir"
fi

# Unpack (applies Debian's own patch series) and apply ours, into a temporary
# directory first so an interrupted run never leaves a half-patched tree.
tmp="${src_dir}.tmp"
rm -rf "$tmp"
(cd "$download_dir" && dpkg-source --no-check -x "$dsc" "$tmp" >/dev/null) ||
  die "dpkg-source -x $dsc failed"
while read -r p; do
  [ -z "$p" ] || [ "${p#\#}" != "$p" ] && continue
  patch -d "$tmp" -p1 --fuzz=0 --quiet --forward < "$patch_dir/$p" ||
    die "patch $patch_dir/$p does not apply to caffe $version"
done < "$patch_dir/series"
rm -rf "$src_dir"
mv "$tmp" "$src_dir"
echo "fetch_caffe: caffe $version unpacked and patched in $src_dir"
