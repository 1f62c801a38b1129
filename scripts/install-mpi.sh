#!/usr/bin/env bash
# Installs the system packages that `cargo build -p rustspeed-comm --features mpi` and `mpirun` need on
# Debian/Ubuntu: OpenMPI (headers, libraries, `mpicc`, `mpirun`) and libclang (rsmpi's mpi-sys generates its
# bindings with bindgen, which loads libclang and its builtin headers at build time).
# Idempotent: does nothing when every package is already installed. Needs root (or sudo) and apt.
set -euo pipefail

packages=(libopenmpi-dev openmpi-bin libclang-dev)

missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q '^install ok installed$'; then
        missing+=("$package")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-mpi: already installed: ${packages[*]}"
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    sudo=(sudo)
fi
echo "install-mpi: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -q
# Recommends would add Fortran and coarray packages that nothing here uses.
"${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
