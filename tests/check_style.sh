#!/usr/bin/env bash
# Fails on style drift: ruff format and ruff check over the Python (and the README's code),
# clang-format over every C++ file in git. `tests/check_style.sh --fix` applies the formatters.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t cxx < <(git ls-files -co --exclude-standard '*.cpp' '*.hpp')
if [[ ${1:-} == --fix ]]; then
    ruff format .
    ruff check --fix .
    clang-format -i "${cxx[@]}"
    exit 0
fi
ruff format --check .
ruff check .
clang-format --dry-run --Werror "${cxx[@]}"
echo "style: ruff format, ruff check and clang-format (${#cxx[@]} C++ files) clean"
