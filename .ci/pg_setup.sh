# PostgreSQL for the test suite, sourced by .ci/run (and by tests/test_ci.py).
#
# Makes sure a local server is up (starting the machine's cluster if it is down, waiting
# at most ~30s), creates a fresh database for this run (dropped on exit) and exports
# STALWART_TEST_POSTGRES_URL. When that cannot be done:
#   - with CI=true the run FAILS (exit 1, saying why): a CI run must not pass with the
#     ~100 PostgreSQL tests silently skipped;
#   - otherwise (a developer's machine) it says why and the PostgreSQL tests skip.
pg_host=${PG_HOST:-127.0.0.1}
pg_user=${PG_USER:-postgres}
pg_setup() {
    if ! command -v pg_isready >/dev/null || ! command -v psql >/dev/null; then
        echo "postgres: pg_isready/psql not installed" >&2
        return 1
    fi
    if ! pg_isready -q -h "$pg_host"; then
        local version
        version=$(ls /etc/postgresql 2>/dev/null | sort -V | tail -n 1)
        if [ -z "$version" ] || ! command -v pg_ctlcluster >/dev/null; then
            echo "postgres: not running on $pg_host and no local cluster to start" >&2
            return 1
        fi
        echo "postgres: starting cluster $version/main" >&2
        pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 || true
        local i
        for i in $(seq 1 30); do
            pg_isready -q -h "$pg_host" && break
            sleep 1
        done
        if ! pg_isready -q -h "$pg_host"; then
            echo "postgres: still not accepting connections on $pg_host after 30s" >&2
            return 1
        fi
    fi
    pg_db="stalwart_ci_$(date +%s)_$$"
    if ! psql -q -h "$pg_host" -U "$pg_user" -d postgres -v ON_ERROR_STOP=1 \
            -c "CREATE DATABASE $pg_db" >&2; then
        echo "postgres: cannot create database $pg_db" >&2
        return 1
    fi
    trap 'psql -q -h "$pg_host" -U "$pg_user" -d postgres \
              -c "DROP DATABASE IF EXISTS $pg_db WITH (FORCE)" >/dev/null 2>&1 || true' EXIT
    export STALWART_TEST_POSTGRES_URL="postgresql://$pg_user@$pg_host:5432/$pg_db"
    echo "postgres: tests use $STALWART_TEST_POSTGRES_URL" >&2
}
if ! pg_setup; then
    if [ "${CI:-}" = "true" ]; then
        echo "postgres: cannot set up PostgreSQL and CI=true: failing the run instead of" \
             "skipping the PostgreSQL tests" >&2
        exit 1
    fi
    echo "postgres: PostgreSQL tests will be skipped (CI=true would fail instead)" >&2
fi
