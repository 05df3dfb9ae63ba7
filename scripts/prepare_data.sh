#!/usr/bin/env bash
# Checkout wrapper of `labo-fairseq prepare` (--help for its options).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
exec "$(labo_python)" -m labo_fairseq prepare "$@"
