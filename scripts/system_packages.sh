#!/usr/bin/env bash
# The system packages the tests need, and only those: Chromium and its chromedriver (the docs' browser test and the
# report screenshots) and PostgreSQL (the database tests). The main job (scripts/lifecycle.sh) needs none of them.
# Installed with apt-get as root, announced; waits up to 5 minutes when another apt process holds the lock; stops with
# a clear message when they cannot be installed. Does nothing when they are all there.
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
# the PostgreSQL source's test starts a throwaway server with Debian's postgresql (initdb, pg_ctl)
{ command -v initdb >/dev/null 2>&1 || compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; } || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
fail() {
  echo "system packages: could not install ${missing[*]}: $1" >&2
  echo "system packages: install them yourself (Debian/Ubuntu: apt-get install ${missing[*]}) and run the tests again" >&2
  exit 1
}
[ "$(id -u)" = 0 ] || fail "not root (run the tests as root once, or install them with sudo)"
command -v apt-get >/dev/null 2>&1 || fail "no apt-get on this machine"
echo "system packages: the tests need ${missing[*]}; installing them with apt-get (waits for the apt lock up to 5 minutes)"
apt=(apt-get -o DPkg::Lock::Timeout=300 -q)
"${apt[@]}" update -qq || fail "apt-get update failed"
DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq "${missing[@]}" >/dev/null || fail "apt-get install failed"
echo "system packages: installed ${missing[*]}"
