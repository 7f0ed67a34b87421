#!/usr/bin/env bash
# Installs what building and testing fleet-agent needs on a Debian machine:
# git (test repositories and its smart-HTTP backend), python3 (the test HTTP servers),
# a C compiler (libgit2 is built from source), the Rust toolchain if missing, and for
# the device suite: debootstrap, systemd-nspawn, and the tools that build the signed
# test apt repository (dpkg-deb, apt-ftparchive, gpg).
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
if [ ${#need[@]} -gt 0 ]; then
  sudo=; [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if ! command -v cargo >/dev/null; then
  echo "installing Rust with rustup" >&2
  curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
fi
