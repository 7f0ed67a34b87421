#!/usr/bin/env bash
# Builds a small signed apt repository of test packages in OUTDIR, to be served over
# HTTP (e.g. `python3 -m http.server --bind 127.0.0.1 --directory OUTDIR PORT`).
#
#   scripts/test-apt-repo.sh OUTDIR [DEB...]
#
# DEBs: more packages to serve beside the built ones (e.g. fleet-agent .debs of several
# versions from scripts/selfupdate-debs.sh), copied into the pool; each architecture's
# index lists only its own and the Architecture: all packages.
# OUTDIR must be empty, absent, or an earlier output of this script (then it is
# replaced). Prints KEY=VALUE lines on stdout:
#   REPO      OUTDIR
#   SUITE     the suite (dists/SUITE), COMPONENT: its one component
#   KEYRING   OUTDIR/fleet-test-archive-keyring.gpg: the public key, binary (for Signed-By)
#   KEY_ASC   the same key, ASCII-armoured
#   FINGERPRINT  the signing key's fingerprint
#   SOURCES   OUTDIR/fleet-test.sources.in: a deb822 source with @URL@ and @KEYRING@ to
#             fill in (URL: http://127.0.0.1:PORT/, KEYRING: the keyring's path on the device)
#   PACKAGES  name=version,... of every package built
# The packages are Architecture: all (they work on every device type) and byte-for-byte
# reproducible (SOURCE_DATE_EPOCH): a package name and version always means the same
# .deb. The signing key is new on every run (a throwaway, no passphrase).
# Needs: dpkg-deb, apt-ftparchive (apt-utils), gpg. Not root.
set -euo pipefail

# ---------------------------------------------------------------------------------------
# The packages. One line each: name, version, kind, Depends, Recommends ("-": none).
# The kind says what the package ships (a build_<kind> function below); add a line for
# another version, or a kind for another shape of package.
#
#   hello    /usr/bin/NAME (prints "NAME VERSION"), conffile /etc/NAME.conf whose content
#            depends on the version (an upgrade over a locally edited file asks the
#            config-file question)
#   service  /usr/bin/NAME (a long-running shell loop that logs "NAME VERSION started"
#            and its config to the journal, and "reloaded" on SIGHUP), conffile
#            /etc/NAME.conf, unit /lib/systemd/system/NAME.service (WantedBy
#            multi-user.target, ExecReload); like a Debian package, postinst enables
#            and starts it (the start only where systemd runs), prerm stops it
#   unit     the same program and unit, but the package neither enables nor starts it
#            (that is the agent's services resource's job)
#   plain    only /usr/share/doc/NAME/README (a dependency, a recommendation)
#   slow     a plain package whose postinst sleeps while /run/fleet-test-slow exists:
#            a test creates the file, kills dpkg during configure, removes the file,
#            and has an interrupted dpkg to recover from
PACKAGES_TABLE='
fleet-test-dep          1.0   plain    -                -
fleet-test-recommended  1.0   plain    -                -
fleet-test-hello        1.0   hello    fleet-test-dep   fleet-test-recommended
fleet-test-hello        1.1   hello    fleet-test-dep   fleet-test-recommended
fleet-test-service      1.0   service  fleet-test-dep   -
fleet-test-manual       1.0   unit     -                -
fleet-test-slow         1.0   slow     -                -
'
SUITE=fleet-test
COMPONENT=main
ARCHES="amd64 arm64 armhf i386"
ORIGIN="fleet-agent tests"
# ---------------------------------------------------------------------------------------

export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
marker=.fleet-test-apt-repo

die() { echo "test-apt-repo: error: $*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: $0 OUTDIR [DEB...]"
for t in dpkg-deb apt-ftparchive gpg; do
  command -v $t >/dev/null || die "$t is missing (apt-get install dpkg-dev apt-utils gnupg)"
done
out=$1
shift
extra=()
for deb in "$@"; do
  [ -f "$deb" ] || die "$deb: no such file"
  extra+=("$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")")
done
if [ -e "$out" ] && [ -n "$(ls -A "$out")" ]; then
  [ -f "$out/$marker" ] || die "$out is not empty and was not made by this script"
  find "$out" -mindepth 1 -delete
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# --- package contents -------------------------------------------------------------------
# Each build_<kind> NAME VERSION DIR fills the package tree DIR (DEBIAN/ is made later).

build_plain() {
  mkdir -p "$3/usr/share/doc/$1"
  printf '%s %s: a package for fleet-agent tests.\n' "$1" "$2" >"$3/usr/share/doc/$1/README"
}

build_hello() {
  local name=$1 version=$2 d=$3
  build_plain "$@"
  mkdir -p "$d/usr/bin" "$d/etc"
  cat >"$d/usr/bin/$name" <<EOF
#!/bin/sh
echo "$name $version"
EOF
  chmod 755 "$d/usr/bin/$name"
  printf '# %s configuration, as shipped by version %s\ngreeting=hello from %s\n' \
    "$name" "$version" "$version" >"$d/etc/$name.conf"
  echo "/etc/$name.conf" >>"$d/DEBIAN.conffiles"
}

build_unit() {
  local name=$1 version=$2 d=$3
  build_plain "$@"
  mkdir -p "$d/usr/bin" "$d/etc" "$d/lib/systemd/system"
  cat >"$d/usr/bin/$name" <<EOF
#!/bin/sh
# $name $version: runs until stopped; logs its configuration at start.
conf=/etc/$name.conf
echo "$name $version started (pid \$\$), config: \$(tr '\\n' ' ' <"\$conf" 2>/dev/null)"
trap 'echo "$name reloaded, config: \$(tr "\\n" " " <"\$conf" 2>/dev/null)"' HUP
trap 'echo "$name stopping"; exit 0' TERM
while :; do
  sleep 3600 &
  wait \$! || true
  kill \$! 2>/dev/null || true
done
EOF
  chmod 755 "$d/usr/bin/$name"
  printf '# %s configuration, as shipped by version %s\nmessage=default\n' "$name" "$version" \
    >"$d/etc/$name.conf"
  echo "/etc/$name.conf" >>"$d/DEBIAN.conffiles"
  cat >"$d/lib/systemd/system/$name.service" <<EOF
[Unit]
Description=$name (fleet-agent test service)

[Service]
ExecStart=/usr/bin/$name
ExecReload=/bin/sh -c 'kill -HUP \$\$MAINPID'

[Install]
WantedBy=multi-user.target
EOF
}

build_service() {
  local name=$1
  build_unit "$@"
  # What dh_installsystemd would generate, reduced to the essentials.
  cat >"$3/DEBIAN.postinst" <<EOF
#!/bin/sh
set -e
if [ "\$1" = configure ]; then
  systemctl enable $name.service >/dev/null 2>&1 || true
  if [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl restart $name.service
  fi
fi
EOF
  cat >"$3/DEBIAN.prerm" <<EOF
#!/bin/sh
set -e
if [ -d /run/systemd/system ] && [ "\$1" = remove ]; then
  systemctl stop $name.service || true
fi
EOF
  cat >"$3/DEBIAN.postrm" <<EOF
#!/bin/sh
set -e
if [ "\$1" = purge ] || [ "\$1" = remove ]; then
  systemctl disable $name.service >/dev/null 2>&1 || true
  if [ -d /run/systemd/system ]; then systemctl daemon-reload || true; fi
fi
EOF
}

build_slow() {
  build_plain "$@"
  cat >"$3/DEBIAN.postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
  while [ -e /run/fleet-test-slow ]; do sleep 0.2; done
fi
EOF
}

# --- build ------------------------------------------------------------------------------
pool=$out/pool/$COMPONENT/f
built=()
while read -r name version kind depends recommends; do
  [ -n "$name" ] || continue
  case "$name" in \#*) continue ;; esac
  declare -F "build_$kind" >/dev/null || die "$name $version: unknown kind '$kind'"
  d=$work/$name-$version
  mkdir -p "$d"
  "build_$kind" "$name" "$version" "$d"
  mkdir -p "$d/DEBIAN"
  for f in conffiles postinst prerm postrm; do
    if [ -f "$d/DEBIAN.$f" ]; then
      mv "$d/DEBIAN.$f" "$d/DEBIAN/$f"
      [ $f = conffiles ] || chmod 755 "$d/DEBIAN/$f"
    fi
  done
  {
    echo "Package: $name"
    echo "Version: $version"
    echo "Architecture: all"
    echo "Maintainer: fleet-agent tests <tests@fleet-agent.invalid>"
    echo "Section: misc"
    echo "Priority: optional"
    echo "Installed-Size: $(du -sk --exclude=DEBIAN "$d" | cut -f1)"
    [ "$depends" = - ] || echo "Depends: $depends"
    [ "$recommends" = - ] || echo "Recommends: $recommends"
    echo "Description: fleet-agent test package ($kind)"
    echo " Built by scripts/test-apt-repo.sh for the device tests."
  } >"$d/DEBIAN/control"
  # Reproducible: fixed times, root owner, a fixed compressor.
  find "$d" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
  mkdir -p "$pool/$name"
  dpkg-deb --root-owner-group -Zxz --build "$d" "$pool/$name/${name}_${version}_all.deb" >/dev/null
  built+=("$name=$version")
done <<<"$PACKAGES_TABLE"

for deb in ${extra[@]+"${extra[@]}"}; do
  name=$(dpkg-deb -f "$deb" Package)
  mkdir -p "$pool/$name"
  cp "$deb" "$pool/$name/"
  built+=("$name=$(dpkg-deb -f "$deb" Version)")
done

# --- indexes and Release ----------------------------------------------------------------
dist=$out/dists/$SUITE
for a in $ARCHES; do
  mkdir -p "$dist/$COMPONENT/binary-$a"
  (cd "$out" && apt-ftparchive --arch "$a" packages pool) >"$dist/$COMPONENT/binary-$a/Packages"
  gzip -9n <"$dist/$COMPONENT/binary-$a/Packages" >"$dist/$COMPONENT/binary-$a/Packages.gz"
done
apt-ftparchive \
  -o APT::FTPArchive::Release::Origin="$ORIGIN" \
  -o APT::FTPArchive::Release::Label="$ORIGIN" \
  -o APT::FTPArchive::Release::Suite="$SUITE" \
  -o APT::FTPArchive::Release::Codename="$SUITE" \
  -o APT::FTPArchive::Release::Architectures="$ARCHES" \
  -o APT::FTPArchive::Release::Components="$COMPONENT" \
  -o APT::FTPArchive::Release::Description="Packages for fleet-agent's device tests" \
  release "$dist" >"$work/Release"
mv "$work/Release" "$dist/Release"

# --- signing: a throwaway key in a throwaway GNUPGHOME ------------------------------------
export GNUPGHOME=$work/gnupg
mkdir -m 700 "$GNUPGHOME"
gpg_() { gpg --batch --quiet --no-tty --pinentry-mode loopback --passphrase '' "$@"; }
gpg_ --quick-generate-key "fleet-agent test archive <archive@fleet-agent.invalid>" ed25519 sign never 2>/dev/null
fpr=$(gpg --batch --with-colons --list-secret-keys 2>/dev/null | awk -F: '$1 == "fpr" { print $10; exit }')
[ -n "$fpr" ] || die "no key was generated"
gpg_ --local-user "$fpr" --digest-algo SHA256 --clearsign -o "$dist/InRelease" "$dist/Release"
gpg_ --local-user "$fpr" --digest-algo SHA256 --armor --detach-sign -o "$dist/Release.gpg" "$dist/Release"
gpg --batch --export "$fpr" >"$out/fleet-test-archive-keyring.gpg"
gpg --batch --armor --export "$fpr" >"$out/fleet-test-archive-keyring.asc"
# Check what apt will check, with the exported keyring alone.
gpgv --keyring "$out/fleet-test-archive-keyring.gpg" "$dist/InRelease" 2>/dev/null ||
  die "InRelease does not verify with the exported keyring"
gpgv --keyring "$out/fleet-test-archive-keyring.gpg" "$dist/Release.gpg" "$dist/Release" 2>/dev/null ||
  die "Release.gpg does not verify with the exported keyring"
gpgconf --kill all 2>/dev/null || true

cat >"$out/fleet-test.sources.in" <<EOF
Types: deb
URIs: @URL@
Suites: $SUITE
Components: $COMPONENT
Signed-By: @KEYRING@
EOF
touch "$out/$marker"

IFS=,
cat <<EOF
REPO=$out
SUITE=$SUITE
COMPONENT=$COMPONENT
KEYRING=$out/fleet-test-archive-keyring.gpg
KEY_ASC=$out/fleet-test-archive-keyring.asc
FINGERPRINT=$fpr
SOURCES=$out/fleet-test.sources.in
PACKAGES=${built[*]}
EOF
