# Chromium for the dashboard's browser tests, sourced by .ci/run (and by tests/test_ci.py).
#
# Playwright drives Debian's Chromium ($STALWART_TEST_CHROMIUM, by default
# /usr/bin/chromium): Playwright's own browser download cannot work on these machines.
# When it is missing, it is installed with apt-get (quiet, non-interactive; measured:
# about 35 s on a python-svc machine, apt-get update included). When that cannot be done:
#   - with CI=true the run FAILS (exit 1, saying why): a CI run must not pass with the
#     browser tests silently skipped;
#   - otherwise (a developer's machine) it says why and the browser tests skip.
chromium=${STALWART_TEST_CHROMIUM:-/usr/bin/chromium}
browser_setup() {
    if [ -x "$chromium" ]; then
        return 0
    fi
    if ! command -v apt-get >/dev/null; then
        echo "chromium: $chromium is missing and there is no apt-get to install it" >&2
        return 1
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "chromium: $chromium is missing and installing it needs root" >&2
        return 1
    fi
    local log started
    log=$(mktemp)
    started=$SECONDS
    echo "chromium: $chromium is missing: apt-get install chromium" >&2
    if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
           DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >"$log" 2>&1; then
        tail -n 5 "$log" >&2
        rm -f "$log"
        echo "chromium: apt-get could not install chromium" >&2
        return 1
    fi
    rm -f "$log"
    echo "chromium: installed in $((SECONDS - started))s" >&2
    if [ ! -x "$chromium" ]; then
        echo "chromium: installed, but there is no $chromium" >&2
        return 1
    fi
}
if browser_setup; then
    export STALWART_TEST_CHROMIUM="$chromium"
else
    if [ "${CI:-}" = "true" ]; then
        echo "chromium: no browser and CI=true: failing the run instead of skipping the" \
             "browser tests" >&2
        exit 1
    fi
    echo "chromium: the browser tests will be skipped (CI=true would fail instead)" >&2
fi
