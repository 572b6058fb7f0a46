#!/usr/bin/env bash
# Installs every Debian package modtracker needs, once. Idempotent and quiet
# when everything is present. Debian 12 (bookworm) only: CMake >= 3.28 comes
# from bookworm-backports, added with the archive URI this machine already uses.
set -euo pipefail

say()  { printf 'modtracker setup: %s\n' "$*" >&2; }
fail() { say "error: $*"; exit 1; }

packages=(clang-16 clang-tools-16 ninja-build libtorch-dev libgloo-dev librange-v3-dev
          doctest-dev libmsgsl-dev nlohmann-json3-dev libcli11-dev make)
# --sanitizers: also clang's sanitizer runtimes (for the asan and tsan presets).
# --test-packages: also the test-only packages.
for arg in "$@"; do
  case "$arg" in
    --sanitizers) packages+=(libclang-rt-16-dev) ;;
    # --test-packages: what the tests alone need (real models scripted from
    # torchvision at build time; the report page checked in headless
    # Chromium, its screenshot read with PIL); `make demo` never needs them.
    --test-packages) packages+=(python3-torchvision chromium python3-pil) ;;
    *) fail "unknown option '$arg' (known: --sanitizers, --test-packages)" ;;
  esac
done
min_cmake=3.28

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done

cmake_ok() {
  command -v cmake >/dev/null 2>&1 || return 1
  local v; v=$(cmake --version | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')
  [ "$(printf '%s\n%s\n' "$min_cmake" "$v" | sort -V | head -n1)" = "$min_cmake" ]
}
need_cmake=0; cmake_ok || need_cmake=1

[ ${#missing[@]} -eq 0 ] && [ $need_cmake -eq 0 ] && exit 0

# From here on we change the system: make sure we can.
. /etc/os-release 2>/dev/null || true
[ "${VERSION_CODENAME:-}" = bookworm ] ||
  fail "this setup targets Debian 12 (bookworm); found '${PRETTY_NAME:-unknown}'. Install by hand: ${packages[*]} and CMake >= $min_cmake."
SUDO=
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || fail "not root and no sudo: run as root, or install: ${missing[*]}"
  SUDO=sudo
fi

# The archive URI of the machine's own main Debian source (deb822 or one-line form).
debian_uri() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    awk 'BEGIN{RS=""; FS="\n"} {
           uri=""; ok=0
           for (i=1;i<=NF;i++) {
             if ($i ~ /^URIs:/)   { split($i,a," "); uri=a[2] }
             if ($i ~ /^Suites:/ && $i ~ /[ \t]bookworm([ \t]|$)/) ok=1
           }
           if (ok && uri!="") { print uri; exit }
         }' "$f"
  done | head -n1
  if [ -r /etc/apt/sources.list ]; then
    awk '$1=="deb" && $0 ~ / bookworm / { for(i=2;i<=NF;i++) if ($i ~ /^[a-z]+:\/\//) {print $i; exit} }' /etc/apt/sources.list
  fi
}

has_backports() {
  grep -rqsE '(^|[[:space:]])bookworm-backports([[:space:]]|$)' /etc/apt/sources.list /etc/apt/sources.list.d/
}

if [ $need_cmake -eq 1 ] && ! has_backports; then
  uri=$(debian_uri | head -n1)
  [ -n "$uri" ] || fail "no Debian 'bookworm' source entry found in /etc/apt; add one, then run again."
  say "adding suite bookworm-backports from $uri"
  keyring=/usr/share/keyrings/debian-archive-keyring.gpg
  {
    echo "Types: deb"; echo "URIs: $uri"; echo "Suites: bookworm-backports"; echo "Components: main"
    [ -r "$keyring" ] && echo "Signed-By: $keyring"
  } | $SUDO tee /etc/apt/sources.list.d/modtracker-bookworm-backports.sources >/dev/null
fi

say "installing: ${missing[*]}$([ $need_cmake -eq 1 ] && echo ' cmake (bookworm-backports)')"
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
trap 'rm -f "$log"' EXIT
$SUDO apt-get update -qq >"$log" 2>&1 ||
  { cat "$log" >&2; fail "apt-get update failed: is the package archive reachable from this machine?"; }
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >"$log" 2>&1 ||
    { tail -n 20 "$log" >&2; fail "could not install: ${missing[*]} (see the apt output above)"; }
fi
if [ $need_cmake -eq 1 ]; then
  $SUDO apt-get install -y -qq --no-install-recommends -t bookworm-backports cmake cmake-data >"$log" 2>&1 ||
    { tail -n 20 "$log" >&2; fail "could not install cmake from bookworm-backports"; }
  hash -r
  cmake_ok || fail "cmake is still older than $min_cmake after the install (is /usr/local/bin/cmake shadowing it?)"
fi
say "all packages present"
