#!/usr/bin/env bash
# Installs every Debian package Sluice's build, demo and tests need.
# Idempotent: packages already present are left alone. Needs root.
set -euo pipefail

PKGS=(
  # build: xsk-rs builds libbpf and libxdp from source; the steering XDP
  # program is C compiled by clang for the bpf target.
  build-essential m4 pkg-config libelf-dev zlib1g-dev clang llvm libbpf-dev linux-libc-dev
  # test network and peers
  iproute2 iputils-ping ethtool curl iperf3 tcpdump bpftool dnsutils procps
  # tests/tests/privileges.rs: setpriv, systemd-analyze verify
  util-linux systemd
  # `sluice top` is tested on a real terminal: tmux renders it, capture-pane reads it
  tmux
  # benchmarks: the kernel baselines, pinning, the plot's font
  iptables nftables util-linux fonts-dejavu-core
  # tests/tests/bgp_bird.rs: a real BIRD 2 (bird, birdc) in the LB and router namespaces
  bird2
)

if [ "$(id -u)" -ne 0 ]; then
  echo "deps.sh: needs root to install packages (run it as root)" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deps.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The tests start their own bird processes (own config, socket and pid
  # file in a temp dir); the packaged service, just installed by us, is not
  # wanted running or starting at boot. A bird2 that was already installed
  # is the operator's and is left alone.
  if printf '%s\n' "${missing[@]}" | grep -qx bird2; then
    systemctl disable --now bird.service >/dev/null 2>&1 || true
  fi
else
  echo "deps.sh: all packages present"
fi

# The kubectl test drives the real kubectl: Debian's kubernetes-client
# (1.20) when the machine has no kubectl of its own.
if ! command -v kubectl >/dev/null 2>&1; then
  echo "deps.sh: installing kubernetes-client (kubectl)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends kubernetes-client >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "deps.sh: cargo not found: install a Rust toolchain (https://rustup.rs) first" >&2
  exit 1
fi
echo "deps.sh: ok"
