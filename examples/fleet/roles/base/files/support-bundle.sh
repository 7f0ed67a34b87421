#!/bin/sh
# Collects what support asks for into one tarball.
set -eu
out=/tmp/support-$(hostname)-$(date +%Y%m%d%H%M%S).tar.gz
tar -czf "$out" /etc/example /var/lib/fleet-agent/state.json 2>/dev/null || true
echo "$out"
