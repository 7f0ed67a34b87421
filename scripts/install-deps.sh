#!/usr/bin/env bash
# Installs what building and testing fleet-agent needs on a Debian machine:
# git (test repositories and its smart-HTTP backend), python3 (the test HTTP servers),
# a C compiler (libgit2 is built from source), the Rust toolchain if missing, and for
# the device suite: debootstrap, systemd-nspawn, and the tools that build the signed
# test apt repository (dpkg-deb, apt-ftparchive, gpg), and systemd-journal-remote (the
# receiver of the run-report tests).
set -euo pipefail
need=()
command -v git >/dev/null || need+=(git)
command -v python3 >/dev/null || need+=(python3)
command -v cc >/dev/null || need+=(gcc libc6-dev)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v make >/dev/null || need+=(make)
command -v curl >/dev/null || need+=(curl)
[ -x /usr/bin/time ] || need+=(time)
[ -x /usr/lib/git-core/git-http-backend ] || need+=(git)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v nsenter >/dev/null || need+=(util-linux)
command -v dpkg-deb >/dev/null || need+=(dpkg)
command -v apt-ftparchive >/dev/null || need+=(apt-utils)
command -v gpg >/dev/null || need+=(gnupg)
# Mender A/B simulation: artifacts, the file-backed u-boot environment, the real 3.x client.
command -v mender-artifact >/dev/null || need+=(mender-artifact)
command -v fw_setenv >/dev/null || need+=(libubootenv-tool)
command -v mender >/dev/null || need+=(mender-client)
# Run reports: the receiver the device tests ship to (systemd-journal-remote).
[ -x /lib/systemd/systemd-journal-remote ] || need+=(systemd-journal-remote)
# Signed commits (tests/integration/signing.rs, src/trust/tests.rs): keys from ssh-keygen.
command -v ssh-keygen >/dev/null || need+=(openssh-client)
# HTTPS trust (tests/integration/sync.rs): a private CA and a TLS server from openssl.
command -v openssl >/dev/null || need+=(openssl)
sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
if [ ${#need[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  # Say what else changes on this machine: installing a package can upgrade one that is
  # already here (systemd-container, for one, needs the systemd of its own version).
  upgrades=$(apt-get -s install --no-install-recommends "${need[@]}" 2>/dev/null |
    awk '$1 == "Inst" && $3 ~ /^\[/ {print $2}' | tr '\n' ' ')
  echo "install-deps: installing ${need[*]}" >&2
  [ -z "$upgrades" ] || echo "install-deps: this also upgrades installed packages: $upgrades" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# Only the mender binary is needed (the A/B simulation's real-client probe): the
# package's service must never run on this machine, so it stays disabled and masked.
if [ -e /lib/systemd/system/mender-client.service ] && [ "$(readlink /etc/systemd/system/mender-client.service 2>/dev/null)" != /dev/null ]; then
  $sudo systemctl --root=/ disable mender-client.service >/dev/null 2>&1 || true
  $sudo ln -sf /dev/null /etc/systemd/system/mender-client.service
  echo "install-deps: mender-client.service disabled and masked (only the mender binary is used)" >&2
fi
# Only the systemd-journal-remote binary is used (tests start it on 127.0.0.1 with
# their own directory): the package's own receiver and uploader never run here.
for unit in systemd-journal-remote.socket systemd-journal-remote.service systemd-journal-upload.service; do
  if [ -e "/lib/systemd/system/$unit" ] && [ "$(readlink "/etc/systemd/system/$unit" 2>/dev/null)" != /dev/null ]; then
    $sudo systemctl --root=/ disable "$unit" >/dev/null 2>&1 || true
    $sudo ln -sf /dev/null "/etc/systemd/system/$unit"
    echo "install-deps: $unit disabled and masked (only the binary is used)" >&2
  fi
done
if ! command -v cargo >/dev/null; then
  echo "installing Rust with rustup" >&2
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
