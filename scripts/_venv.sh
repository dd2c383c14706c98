# Sourced by scripts/test.sh and scripts/demo.sh, run from the repository root:
#
#     venv_with EXTRAS   # e.g. venv_with dev
#
# makes .venv with $PYTHON (default python3) where there is none, and installs the package into it
# (editable, with EXTRAS) and an up-to-date pip.
venv_with() {
    [ -x .venv/bin/python ] || "${PYTHON:-python3}" -m venv .venv
    .venv/bin/python -m pip install --quiet --upgrade pip
    .venv/bin/python -m pip install --quiet -e ".[$1]"
}
