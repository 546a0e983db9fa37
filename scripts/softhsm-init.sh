#!/usr/bin/env bash
# Initialise a SoftHSM2 token for xkslab in a private token directory.
#
# Why a private directory: the Debian default (/var/lib/softhsm/tokens) is root-owned and shared
# by everything on the host; a per-checkout directory needs no root and is thrown away with it.
# The token only gets a label and PINs here; the sealing key is created by
# dsm_emulator.sealing.create_sealing_key (non-extractable, inside the token).
#
# Status messages go to stderr and only the export line goes to stdout, so
#   eval "$(scripts/softhsm-init.sh)"
# sets SOFTHSM2_CONF in the calling shell. Re-running with the same label is a no-op (exit 0).
set -euo pipefail

usage() {
    cat >&2 <<'EOF'
usage: scripts/softhsm-init.sh [--dir DIR] [--label LABEL] [--pin PIN] [--so-pin SOPIN]
  --dir DIR        token directory root (default ./.xkslab/softhsm); tokens go in DIR/tokens
  --label LABEL    token label, at most 32 characters (default xkslab)
  --pin PIN        user PIN, 4-255 characters (default $XKSLAB_PKCS11_PIN or 1234)
  --so-pin SOPIN   security officer PIN, 4-255 characters (default 5678)
Prints the "export SOFTHSM2_CONF=..." line to use on stdout.
EOF
}

die() {
    echo "softhsm-init: $*" >&2
    exit 1
}

dir="./.xkslab/softhsm"
label="xkslab"
pin="${XKSLAB_PKCS11_PIN:-1234}"
so_pin="5678"

need_value() {
    [[ $# -ge 2 ]] || die "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) need_value "$@"; dir="$2"; shift 2 ;;
        --dir=*) dir="${1#*=}"; shift ;;
        --label) need_value "$@"; label="$2"; shift 2 ;;
        --label=*) label="${1#*=}"; shift ;;
        --pin) need_value "$@"; pin="$2"; shift 2 ;;
        --pin=*) pin="${1#*=}"; shift ;;
        --so-pin) need_value "$@"; so_pin="$2"; shift 2 ;;
        --so-pin=*) so_pin="${1#*=}"; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage; die "unknown argument: $1" ;;
    esac
done

# The PKCS#11 label field is 32 bytes (not characters).
label_bytes="$(printf '%s' "$label" | wc -c)"
[[ -n "$label" && $label_bytes -le 32 ]] || die "token label must be 1-32 bytes"
# SoftHSM2 trims trailing blanks from the 32-byte label field, so such a label would never match.
[[ "$label" == "${label%[[:space:]]}" ]] || die "token label must not end with whitespace"
[[ ${#pin} -ge 4 && ${#pin} -le 255 ]] || die "user PIN must be 4-255 characters"
[[ ${#so_pin} -ge 4 && ${#so_pin} -le 255 ]] || die "SO PIN must be 4-255 characters"

command -v softhsm2-util >/dev/null 2>&1 \
    || die "softhsm2-util not found; install SoftHSM2 (Debian/Ubuntu: apt-get install softhsm2)"

umask 077
mkdir -p "$dir/tokens"
dir="$(cd "$dir" && pwd -P)"
conf="$dir/softhsm2.conf"

# Rewritten every run (it is derived only from DIR) via a temp file, so a concurrent reader never
# sees a half-written config.
tmp_conf="$(mktemp "$dir/.softhsm2.conf.XXXXXX")"
trap 'rm -f "$tmp_conf"' EXIT
cat >"$tmp_conf" <<EOF
# Written by xkslab scripts/softhsm-init.sh
directories.tokendir = $dir/tokens
objectstore.backend = file
log.level = ERROR
slots.removable = false
slots.mechanisms = ALL
library.reset_on_fork = false
EOF
mv -f "$tmp_conf" "$conf"
trap - EXIT

export SOFTHSM2_CONF="$conf"

# softhsm2-util pads labels to 32 characters; strip the padding before comparing.
token_exists() {
    softhsm2-util --show-slots 2>/dev/null \
        | sed -n 's/^[[:space:]]*Label:[[:space:]]*//p' \
        | sed 's/[[:space:]]*$//' \
        | grep -Fx -- "$1" >/dev/null
}

if token_exists "$label"; then
    echo "softhsm-init: token '$label' already exists in $dir/tokens; leaving it as is" >&2
else
    # softhsm2-util itself does not refuse duplicate labels, hence the check above.
    softhsm2-util --init-token --free --label "$label" --pin "$pin" --so-pin "$so_pin" >&2
    token_exists "$label" || die "token '$label' was not found after initialisation"
    echo "softhsm-init: initialised token '$label' in $dir/tokens" >&2
fi

printf 'export SOFTHSM2_CONF=%q\n' "$conf"
