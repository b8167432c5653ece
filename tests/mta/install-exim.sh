#!/bin/bash
# install-exim.sh - make Exim available to slammer's integration tests (tests/tests/exim.rs)
# WITHOUT installing it as a package.
#
#   sudo tests/mta/install-exim.sh
#
# Debian's MTAs conflict with each other (exim4-config conflicts with postfix) and Postfix must
# stay installed for the Postfix tests. So this script:
#   1. apt-get update;
#   2. downloads exim4-daemon-light (`apt-get download`: the .deb only, nothing is installed) and
#      unpacks it with `dpkg-deb -x` into <workspace>/.tools/mta/exim/ (gitignored via /.tools);
#      the test harness runs <that>/usr/sbin/exim4 with its own config (-C). exim4-base and
#      exim4-config are not needed: they hold Debian's config generator, cron jobs and helper
#      tools, while the daemon binary has everything compiled in;
#   3. installs the daemon's library dependencies (read from the .deb's Depends, without
#      exim4-base and debconf) that are missing, with apt-get, refusing to go on if apt would
#      remove any package (Postfix must stay);
#   4. creates the system group and user Debian-exim (Exim's compiled-in exim_user) if missing;
#   5. checks that the binary starts (`exim4 -bV` with a throw-away config).
#
# Idempotent: a second run finds the same version unpacked and only re-checks it. Needs root
# (apt-get, useradd). Touches nothing outside the workspace except the apt state (libraries)
# and /etc/passwd, /etc/group (Debian-exim).
set -euo pipefail

PKG=exim4-daemon-light
EXIM_USER=Debian-exim
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
DEST=$ROOT/.tools/mta/exim
export DEBIAN_FRONTEND=noninteractive

log() { echo "install-exim: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root (apt-get, useradd)"

log "apt-get update"
apt-get update -qq

installed() { [ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null)" = "install ok installed" ]; }

candidate=$(apt-cache policy "$PKG" | awk '/Candidate:/ {print $2}')
[ -n "$candidate" ] && [ "$candidate" != "(none)" ] || die "apt knows no candidate for $PKG"

mkdir -p "$ROOT/.tools/mta"
work=$(mktemp -d "$ROOT/.tools/mta/.exim-install.XXXXXX")
trap 'rm -rf "$work"' EXIT

deb_depends=""
if [ -x "$DEST/usr/sbin/exim4" ] && [ "$(cat "$DEST/.version" 2>/dev/null)" = "$candidate" ] \
    && [ -s "$DEST/.depends" ]; then
    log "$PKG $candidate already unpacked in $DEST"
    deb_depends=$(cat "$DEST/.depends")
else
    log "downloading $PKG $candidate"
    # apt drops privileges to _apt for downloads: let it write into the work dir.
    if getent passwd _apt >/dev/null; then chown _apt "$work"; fi
    (cd "$work" && apt-get download -q "$PKG=$candidate") || die "apt-get download $PKG failed"
    chown root "$work"
    debs=("$work/${PKG}_"*.deb)
    [ -f "${debs[0]}" ] || die "no .deb downloaded for $PKG"
    deb=${debs[0]}
    deb_depends=$(dpkg-deb -f "$deb" Depends)
    dpkg-deb -x "$deb" "$work/root"
    # The binary is setuid root in the package; the tests run it as root, so drop the bit
    # rather than leave a setuid-root binary in the workspace.
    chmod 0755 "$work/root/usr/sbin/exim4"
    printf '%s\n' "$candidate" >"$work/root/.version"
    printf '%s\n' "$deb_depends" >"$work/root/.depends"
    rm -rf "$DEST.old"
    if [ -e "$DEST" ]; then mv "$DEST" "$DEST.old"; fi
    mv "$work/root" "$DEST"
    rm -rf "$DEST.old"
    log "unpacked $PKG $candidate into $DEST"
fi

# Library dependencies: first alternative of each, without version and arch qualifiers.
missing=()
while read -r dep; do
    case "$dep" in "" | exim4-base | debconf) continue ;; esac
    installed "$dep" || missing+=("$dep")
done < <(printf '%s\n' "$deb_depends" | tr ',' '\n' | sed -e 's/|.*//' -e 's/(.*)//' -e 's/:.*//' -e 's/[[:space:]]//g')
if [ ${#missing[@]} -gt 0 ]; then
    log "installing missing libraries: ${missing[*]}"
    # Outputs go through variables, not `| grep -q`: with pipefail an early grep exit could
    # turn a match into a failure (SIGPIPE).
    simulation=$(apt-get install -s --no-install-recommends "${missing[@]}")
    if grep -q '^Remv' <<<"$simulation"; then
        grep '^Remv' <<<"$simulation" >&2
        die "installing ${missing[*]} would remove packages; refusing"
    fi
    apt-get install -y -q --no-install-recommends "${missing[@]}"
else
    log "library dependencies already installed"
fi
installed postfix || log "warning: postfix is not installed (the Postfix tests need it)"

# Exim's compiled-in unprivileged user (the harness also names it as exim_user).
if ! getent group "$EXIM_USER" >/dev/null; then
    groupadd --system "$EXIM_USER"
    log "created group $EXIM_USER"
fi
if ! getent passwd "$EXIM_USER" >/dev/null; then
    useradd --system --gid "$EXIM_USER" --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin --comment "Exim for slammer tests" "$EXIM_USER"
    log "created user $EXIM_USER"
fi

# Check: every library resolves and the binary reads a config.
exim=$DEST/usr/sbin/exim4
libs=$(ldd "$exim")
if grep -q 'not found' <<<"$libs"; then
    grep 'not found' <<<"$libs" >&2
    die "$exim has unresolved libraries"
fi
# Everything Exim could write goes to the work dir (the compiled-in spool is /var/spool/exim4).
mkdir -p "$work/spool" "$work/log"
printf '%s\n' "primary_hostname = install-check.invalid" "exim_user = $EXIM_USER" \
    "exim_group = $EXIM_USER" "keep_environment =" "spool_directory = $work/spool" \
    "log_file_path = $work/log/%slog" >"$work/check.conf"
chmod 0644 "$work/check.conf"
"$exim" -C "$work/check.conf" -bV >"$work/bV.out" 2>&1 || { cat "$work/bV.out" >&2; die "$exim -bV failed"; }
log "ok: $(head -n 1 "$work/bV.out") at $exim"
