#!/usr/bin/env bash
# The emulated aarch64 environment the aarch64 tests run in (tests/test_aarch64.py), all under .arm64/ (git-ignored):
#   .arm64/rootfs/              CPython 3.11 for arm64 with its headers, unpacked from Debian 12's arm64 .debs
#                               (a private apt state: the host's dpkg database is never touched, no maintainer scripts)
#   .arm64/bin/qemu-aarch64-10  qemu-user 10 from bookworm-backports (Debian 12's qemu 7.2 lacks neoverse-v1/n2 and
#                               shows the host's /proc/cpuinfo to aarch64 guests), extracted, not installed
#   .arm64/ready                written last; holds RECIPE below. Present and current = nothing to do (idempotent)
# Needs root and apt-get (for the private apt state) and network access to the Debian mirror this machine uses.
# Where it cannot be made it prints one line saying why and exits 0: the aarch64 tests then skip, naming this script.
# Measured on the 2-vCPU CI machine: 47-62 s the first time (~165 MB kept), 0.05 s when cached.
set -uo pipefail
cd "$(dirname "$0")/.."
A=${FATDISPATCH_ARM64_ENV:-$PWD/.arm64}
RECIPE="arm64-env 1: bookworm python3.11 libpython3.11-dev python3.11-venv; qemu-user bookworm-backports"

skip() { echo "arm64: skipped: $*; the aarch64 tests will be skipped (rerun build_tools/arm64_env.sh when fixed)" >&2; exit 0; }

if [ -f "$A/ready" ] && [ "$(cat "$A/ready")" = "$RECIPE" ] && [ -x "$A/bin/qemu-aarch64-10" ] \
   && [ -x "$A/rootfs/usr/bin/python3.11" ] && [ -f "$A/rootfs/usr/include/python3.11/Python.h" ]; then
  echo "arm64: ready (cached in $A)"
  exit 0
fi
[ "$(uname -s)" = Linux ] || skip "not Linux"
[ "$(id -u)" = 0 ] || skip "not root (a private apt state needs root)"
command -v apt-get >/dev/null 2>&1 || skip "no apt-get"
command -v dpkg-deb >/dev/null 2>&1 || skip "no dpkg-deb"
K=/usr/share/keyrings/debian-archive-keyring.gpg
[ -f "$K" ] || skip "no Debian archive keyring ($K)"
# the mirror this machine's apt already uses (first URIs line, without its trailing /debian path)
M=$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null | sed 's#/debian/*$##')
[ -n "$M" ] || M=$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null | sed 's#/debian/*$##')
[ -n "$M" ] || skip "no Debian mirror found in /etc/apt/sources.list{,.d/debian.sources}"

started=$(date +%s)
rm -f "$A/ready"
mkdir -p "$A"

mkpriv() {  # mkpriv DIR ARCH SOURCES-LINES: an apt state of its own (arch ARCH only, empty dpkg status)
  local d=$1
  mkdir -p "$d/lists/partial" "$d/archives/partial" "$d/cache" "$d/etc/apt.conf.d" "$d/etc/preferences.d"
  : > "$d/status"
  printf '%s\n' "$3" > "$d/sources.list"
  cat > "$d/apt.conf" <<EOF
APT::Architecture "$2";
APT::Architectures { "$2"; };
Dir::Etc::SourceList "$d/sources.list";
Dir::Etc::SourceParts "-";
Dir::Etc::Parts "$d/etc/apt.conf.d";
Dir::Etc::Preferences "$d/etc/preferences";
Dir::Etc::PreferencesParts "$d/etc/preferences.d";
Dir::State "$d";
Dir::State::Lists "$d/lists";
Dir::State::status "$d/status";
Dir::Cache "$d/cache";
Dir::Cache::archives "$d/archives";
APT::Install-Recommends "false";
APT::Sandbox::User "root";
EOF
}

make_env() {
  set -e
  # 1. arm64 CPython 3.11 + headers: download the .debs with the private apt, unpack each into the rootfs
  mkpriv "$A/apt" arm64 "deb [arch=arm64 signed-by=$K] $M/debian bookworm main
deb [arch=arm64 signed-by=$K] $M/debian bookworm-updates main
deb [arch=arm64 signed-by=$K] $M/debian-security bookworm-security main"
  APT_CONFIG=$A/apt/apt.conf apt-get update -qq
  APT_CONFIG=$A/apt/apt.conf DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --download-only \
    python3.11 libpython3.11-dev python3.11-venv >/dev/null
  rm -rf "$A/rootfs.new"; mkdir -p "$A/rootfs.new"
  for d in "$A"/apt/archives/*.deb; do dpkg-deb -x "$d" "$A/rootfs.new"; done
  # byte-compile the stdlib natively (3.11's bytecode magic is the same for every 3.11.x): saves emulated time
  if command -v python3.11 >/dev/null 2>&1; then
    python3.11 -m compileall -q -j0 "$A/rootfs.new/usr/lib/python3.11" >/dev/null 2>&1 || true
  fi
  rm -rf "$A/rootfs"; mv "$A/rootfs.new" "$A/rootfs"
  rm -f "$A"/apt/archives/*.deb   # the rootfs is the cache; the .debs would double the disk use

  # 2. qemu-user 10 (static) from bookworm-backports' .deb, extracted
  mkpriv "$A/aptx" amd64 "deb [arch=amd64 signed-by=$K] $M/debian bookworm-backports main"
  APT_CONFIG=$A/aptx/apt.conf apt-get update -qq
  (cd "$A/aptx/archives" && rm -f qemu-user_*.deb && APT_CONFIG=$A/aptx/apt.conf apt-get download -qq qemu-user/bookworm-backports)
  rm -rf "$A/qemu10"; dpkg-deb -x "$A"/aptx/archives/qemu-user_*.deb "$A/qemu10"
  mkdir -p "$A/bin"; cp "$A/qemu10/usr/bin/qemu-aarch64" "$A/bin/qemu-aarch64-10"; rm -rf "$A/qemu10"
  rm -f "$A"/aptx/archives/*.deb

  # 3. smoke test: the SVE model runs the emulated interpreter
  "$A/bin/qemu-aarch64-10" -cpu neoverse-v1 -L "$A/rootfs" "$A/rootfs/usr/bin/python3.11" -S \
    -c 'import sys, platform; assert platform.machine() == "aarch64", platform.machine()'
  "$A/bin/qemu-aarch64-10" --version | head -n1 | grep -q 'version 10\.' || { echo "arm64: qemu is not version 10" >&2; exit 1; }
}

echo "arm64: making the emulated aarch64 environment in $A (Debian arm64 python3.11 + qemu 10; ~150 MB)"
if ! (make_env); then
  skip "making it failed (see the messages above: no network to $M?)"
fi
rm -rf "$A/apt/lists" "$A/aptx/lists" "$A/apt/cache" "$A/aptx/cache"   # ~250 MB of indexes, only for downloading
printf '%s' "$RECIPE" > "$A/ready"
echo "arm64: ready in $(( $(date +%s) - started )) s ($("$A/bin/qemu-aarch64-10" --version | head -n1); $(du -sh "$A" | cut -f1))"
