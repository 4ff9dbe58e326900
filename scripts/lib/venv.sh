# Sourced by the checks that need Python packages from PyPI (check-python.sh,
# check-openai-client.sh, check-lm-eval.sh).
#
#   python_venv WORKDIR PACKAGE...
#
# creates WORKDIR and a virtual environment in WORKDIR/venv (kept between runs), installs the
# packages from PyPI into it, and sets `venv` and `py` (its python).
python_venv() {
    local work=$1
    shift
    venv=$work/venv
    mkdir -p "$work"
    if [ ! -x "$venv/bin/python" ]; then
        python3 -m venv "$venv"
    fi
    py=$venv/bin/python
    "$py" -m pip install --quiet --disable-pip-version-check "$@"
}
