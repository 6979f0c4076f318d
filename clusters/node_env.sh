#!/usr/bin/env bash
# Every node's Python environment: a virtual environment at ~/fishr-tune-venv, first on PATH for the shells that
# `ray up`, `ray submit` and `ray exec` open (Ray runs `bash --login -c -i CMD` over SSH). A venv, because Debian 12+
# and Ubuntu 23.04+ refuse `pip install --user` into the system Python (PEP 668), and because a fresh Debian or
# Ubuntu has no `python` command, which is what `ray submit` runs. Safe to run again: nothing is added twice.
set -euo pipefail

venv="$HOME/fishr-tune-venv"
line='export PATH="$HOME/fishr-tune-venv/bin:$PATH"  # fishr-tune (clusters/node_env.sh)'

test -x "$venv/bin/python" || python3 -m venv "$venv"

# First line of ~/.bashrc: Debian's and Ubuntu's .bashrc return early for non-interactive shells.
if ! grep -qsF "fishr-tune-venv/bin" "$HOME/.bashrc"; then
    { echo "$line"; cat "$HOME/.bashrc" 2>/dev/null || true; } > "$HOME/.bashrc.fishr-tune"
    mv "$HOME/.bashrc.fishr-tune" "$HOME/.bashrc"
fi
# A login shell reads the first of these that exists; without any, it never reads ~/.bashrc.
for profile in "$HOME/.bash_profile" "$HOME/.bash_login" "$HOME/.profile"; do
    if [ -f "$profile" ]; then break; fi
done
if [ ! -f "$profile" ]; then
    echo '[ -f "$HOME/.bashrc" ] && . "$HOME/.bashrc"' > "$profile"
elif ! grep -qsF "fishr-tune-venv/bin" "$profile"; then
    echo "$line" >> "$profile"
fi
"$venv/bin/python" -m pip install --quiet --upgrade pip
echo "fishr-tune: $venv ready ($("$venv/bin/python" --version))"
