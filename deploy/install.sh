#!/bin/bash
# deploy/install.sh DAEMON... -- TOOL... — `make install` (see docs/deploy.md).
#
# Copies the built programs, their systemd units, man pages (from build/man,
# made by `make man`), the sysusers.d entry, example configuration, logrotate
# snippet and docs under $DESTDIR$PREFIX. Paths inside the units are the final
# ones (without DESTDIR). Never writes $SYSCONFDIR (/etc): the examples go to
# $DOCDIR/examples for the admin to copy.
#
#   DAEMON  bin/picomdm-<process>  -> $SBINDIR (section 8), unit picomdm-<process>.service
#   TOOL    bin/<tool>             -> $BINDIR  (section 1); picomdm also gets picomdm-audit.service
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PREFIX:=/usr/local}" "${DESTDIR:=}"
: "${BINDIR:=$PREFIX/bin}" "${SBINDIR:=$PREFIX/sbin}" "${SYSCONFDIR:=/etc}"
: "${UNITDIR:=$PREFIX/lib/systemd/system}" "${SYSUSERSDIR:=$PREFIX/lib/sysusers.d}"
: "${MANDIR:=$PREFIX/share/man}" "${DOCDIR:=$PREFIX/share/doc/picomdm}" "${MANSRC:=build/man}"
D=$DESTDIR

daemons=() tools=()
while [ $# -gt 0 ] && [ "$1" != -- ]; do daemons+=("$1"); shift; done
[ $# -gt 0 ] && shift
tools=("$@")

say() { printf '  %-8s %s\n' "$1" "$2"; }
put() { # mode src dst
    install -D -m "$1" "$2" "$3"
    say install "${3#"$D"}"
}
unit() { # template dst: fill in the final paths
    sed -e "s|@SBINDIR@|$SBINDIR|g" -e "s|@BINDIR@|$BINDIR|g" \
        -e "s|@SYSCONFDIR@|$SYSCONFDIR|g" -e "s|@DOCDIR@|$DOCDIR|g" "$1" >"$2.tmp"
    if grep -n '@[A-Z]*@' "$2.tmp" >&2; then
        echo "install: $1 has a placeholder install.sh does not know (above)" >&2
        rm -f "$2.tmp"
        exit 1
    fi
    chmod 0644 "$2.tmp" && mv "$2.tmp" "$2"
    say unit "${2#"$D"}"
}
page() { # program section
    local src=$MANSRC/man$2/$1.$2
    if [ ! -f "$src" ]; then
        echo "install: no man page $src for $1: run 'make man' (needs help2man: make deps)" >&2
        exit 1
    fi
    put 0644 "$src" "$D$MANDIR/man$2/$1.$2"
}

install -d -m 0755 "$D$BINDIR" "$D$SBINDIR" "$D$UNITDIR" "$D$DOCDIR/examples"
for b in ${daemons[@]+"${daemons[@]}"}; do
    n=$(basename "$b")
    put 0755 "$b" "$D$SBINDIR/$n"
    page "$n" 8
    t=deploy/systemd/$n.service.in
    if [ ! -f "$t" ]; then
        echo "install: no unit template $t for $n: add one (copy picomdm-scheduler.service.in)" >&2
        exit 1
    fi
    unit "$t" "$D$UNITDIR/$n.service"
done
for b in ${tools[@]+"${tools[@]}"}; do
    n=$(basename "$b")
    put 0755 "$b" "$D$BINDIR/$n"
    page "$n" 1
    [ "$n" = picomdm ] && unit deploy/systemd/picomdm-audit.service.in "$D$UNITDIR/picomdm-audit.service"
done
put 0644 deploy/systemd/picomdm.target "$D$UNITDIR/picomdm.target"
put 0644 "$MANSRC/man5/picomdm.cfg.5" "$D$MANDIR/man5/picomdm.cfg.5"
put 0644 deploy/sysusers.d/picomdm.conf "$D$SYSUSERSDIR/picomdm.conf"
put 0644 deploy/examples/picomdm.cfg "$D$DOCDIR/examples/picomdm.cfg"
put 0644 deploy/examples/picomdm-multihost.cfg "$D$DOCDIR/examples/picomdm-multihost.cfg"
put 0644 deploy/logrotate/picomdm "$D$DOCDIR/examples/logrotate.picomdm"
for d in README.md docs/*.md; do
    [ -f "$d" ] && put 0644 "$d" "$D$DOCDIR/$(basename "$d")"
done
cat <<MSG
Installed under ${D:-/}. Next (as root, once per host; docs/deploy.md has the details):
  systemd-sysusers                      # creates the picomdm user
  install -d -o root -g picomdm -m 0750 $SYSCONFDIR/picomdm
  install -o root -g picomdm -m 0640 $DOCDIR/examples/picomdm.cfg $SYSCONFDIR/picomdm/
  systemctl daemon-reload && systemctl enable --now picomdm.target picomdm-broker picomdm-store ...
MSG
