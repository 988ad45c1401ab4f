#!/usr/bin/env bash
# Installs the system packages the test suite needs on a Debian bookworm machine:
#   - PostgreSQL 15 server binaries
#   - pgvector for PostgreSQL 15 (built from Debian's trixie source package,
#     since bookworm has no binary package)
#   - redis-server (installed only; the test runner starts its own instance)
#
# Idempotent: every step is skipped when its result is already present, so a
# second run does nothing. No service is started by this script.
set -euo pipefail

PG_MAJOR=15
PG_BIN="/usr/lib/postgresql/${PG_MAJOR}/bin"
PG_CONFIG="${PG_BIN}/pg_config"
PG_EXT_DIR="/usr/share/postgresql/${PG_MAJOR}/extension"
PG_LIB_DIR="/usr/lib/postgresql/${PG_MAJOR}/lib"
SRC_SUITE="trixie"
DEBIAN_SOURCES="/etc/apt/sources.list.d/debian.sources"

log() { printf '[install-deps] %s\n' "$*"; }
die() { printf '[install-deps] ERROR: %s\n' "$*" >&2; exit 1; }

# Root or sudo -------------------------------------------------------------
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
  else
    die "not running as root and sudo is not available"
  fi
fi
as_root() { "${SUDO[@]}" "$@"; }

# Private temp folder + cleanup --------------------------------------------
tmp=""
policy_rc_installed=0
cleanup() {
  if [ "$policy_rc_installed" -eq 1 ]; then
    as_root rm -f /usr/sbin/policy-rc.d || true
  fi
  if [ -n "$tmp" ] && [ -d "$tmp" ]; then
    as_root rm -rf "$tmp" || true
  fi
}
trap cleanup EXIT

# apt helpers ----------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
apt_updated=0
apt_update_once() {
  if [ "$apt_updated" -eq 0 ]; then
    log "apt-get update"
    as_root apt-get update -qq
    apt_updated=1
  fi
}

# Packages such as postgresql-15 and redis-server try to start their service
# on install. Prevent that with the standard policy-rc.d mechanism, but only
# when the machine does not already have its own policy (removed on exit).
block_service_start() {
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
    as_root chmod 0755 /usr/sbin/policy-rc.d
    policy_rc_installed=1
  fi
}

apt_install() {
  apt_update_once
  block_service_start
  log "apt-get install $*"
  as_root apt-get install -y -qq --no-install-recommends "$@"
}

# 1. PostgreSQL 15 server ----------------------------------------------------
if [ -x "${PG_BIN}/initdb" ] && [ -x "${PG_BIN}/pg_ctl" ] && [ -x "${PG_BIN}/postgres" ]; then
  log "PostgreSQL ${PG_MAJOR} server: already installed"
else
  log "PostgreSQL ${PG_MAJOR} server: installing"
  apt_install "postgresql-${PG_MAJOR}"
fi

# 2. pgvector for PostgreSQL 15 ---------------------------------------------
pgvector_present() {
  [ -f "${PG_EXT_DIR}/vector.control" ] && [ -f "${PG_LIB_DIR}/vector.so" ]
}

# Writes a deb-src stanza for $SRC_SUITE derived from the first stanza of the
# machine's Debian sources (same URIs, components and keyring).
write_src_stanza() {
  local out="$1"
  if [ -f "$DEBIAN_SOURCES" ]; then
    awk -v suite="$SRC_SUITE" '
      /^[[:space:]]*$/ { if (seen) exit; next }
      { seen = 1 }
      /^#/            { next }
      /^Types:/       { print "Types: deb-src"; next }
      /^Suites:/      { print "Suites: " suite; next }
      { print }
    ' "$DEBIAN_SOURCES" >"$out"
  elif [ -f /etc/apt/sources.list ]; then
    # One-line-style fallback: first "deb" line, same URI, trixie, main.
    local uri
    uri="$(awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i !~ /^\[/ && $i !~ /\]$/) { print $i; exit } }' /etc/apt/sources.list)"
    [ -n "$uri" ] || die "no 'deb' entry found in /etc/apt/sources.list"
    printf 'Types: deb-src\nURIs: %s\nSuites: %s\nComponents: main\n' "$uri" "$SRC_SUITE" >"$out"
  else
    die "no Debian apt sources found ($DEBIAN_SOURCES)"
  fi
  grep -q '^Types: deb-src' "$out" && grep -q "^Suites: ${SRC_SUITE}\$" "$out" && grep -q '^URIs:' "$out" \
    || die "could not derive a deb-src entry from the machine's apt sources"
}

if pgvector_present; then
  log "pgvector for PostgreSQL ${PG_MAJOR}: already installed"
else
  log "pgvector for PostgreSQL ${PG_MAJOR}: building from Debian ${SRC_SUITE} source package"

  # Build tools and server headers.
  need=()
  if [ ! -x "$PG_CONFIG" ] || [ ! -f "$("$PG_CONFIG" --includedir-server 2>/dev/null)/postgres.h" ]; then
    need+=("postgresql-server-dev-${PG_MAJOR}")
  fi
  command -v make >/dev/null 2>&1 || need+=(make)
  command -v gcc >/dev/null 2>&1 || need+=(gcc)
  command -v dpkg-source >/dev/null 2>&1 || need+=(dpkg-dev)
  if [ "${#need[@]}" -gt 0 ]; then
    apt_install "${need[@]}"
  fi

  tmp="$(mktemp -d)"
  # apt downloads as the unprivileged _apt user when it exists; let it in.
  chmod 0755 "$tmp"
  mkdir -p "$tmp/parts" "$tmp/lists/partial" "$tmp/build"
  write_src_stanza "$tmp/parts/debian-src.sources"
  if id _apt >/dev/null 2>&1; then
    as_root chown _apt "$tmp/lists/partial" "$tmp/build"
  fi

  # Private apt state: only our deb-src entry, private lists, no shared caches.
  # The machine's apt configuration and lists are left untouched.
  apt_private=(
    -o "Dir::Etc::SourceList=/dev/null"
    -o "Dir::Etc::SourceParts=$tmp/parts"
    -o "Dir::State::Lists=$tmp/lists"
    -o "Dir::Cache::pkgcache="
    -o "Dir::Cache::srcpkgcache="
  )
  log "fetching ${SRC_SUITE} source index"
  as_root apt-get -qq "${apt_private[@]}" update
  log "downloading pgvector source package"
  (cd "$tmp/build" && as_root apt-get -qq "${apt_private[@]}" source --download-only pgvector)

  dsc="$(find "$tmp/build" -maxdepth 1 -name 'pgvector_*.dsc' | head -n 1)"
  [ -n "$dsc" ] || die "pgvector source package was not downloaded"
  log "unpacking $(basename "$dsc")"
  as_root dpkg-source --no-check -x "$dsc" "$tmp/build/pgvector" >/dev/null

  log "building pgvector"
  # OPTFLAGS= : portable build (no -march=native), as Debian's package does.
  as_root make -C "$tmp/build/pgvector" -s -j"$(nproc 2>/dev/null || echo 2)" \
    PG_CONFIG="$PG_CONFIG" OPTFLAGS= >/dev/null
  log "installing pgvector"
  as_root make -C "$tmp/build/pgvector" -s PG_CONFIG="$PG_CONFIG" OPTFLAGS= install >/dev/null

  pgvector_present || die "pgvector build finished but vector.control/vector.so are missing"
  log "pgvector $(sed -n "s/^default_version = '\(.*\)'/\1/p" "${PG_EXT_DIR}/vector.control") installed"
fi

# 3. redis-server ------------------------------------------------------------
if command -v redis-server >/dev/null 2>&1; then
  log "redis-server: already installed"
else
  log "redis-server: installing"
  apt_install redis-server
fi

log "done"
