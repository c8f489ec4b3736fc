#!/bin/sh
# pgcausal's rejoin hook (failover.rejoin_command) for a node whose data directory is on this
# host: makes it a streaming follower of the current leader.
#
#   stop it if it runs; pg_rewind from the leader (crash recovery first if it died uncleanly);
#   write standby.signal and primary_conninfo (pg_rewind -R, application_name = the node's
#   name); start it. With PGCAUSAL_REJOIN_BASEBACKUP=1, or when pg_rewind fails, the data
#   directory is replaced by a full pg_basebackup instead.
#
# Environment (set by pgcausal): PGCAUSAL_NODE, PGCAUSAL_NODE_DATA_DIR ([[nodes]] data_dir),
# PGCAUSAL_LEADER_HOST, PGCAUSAL_LEADER_PORT, PGUSER/PGPASSWORD (the failover login: pg_rewind
# reads the leader's files with it), PGCAUSAL_REPLICATION_USER/_PASSWORD (what the follower
# streams with). Run as root, it acts as the data directory's owner; otherwise as itself (then
# the owner). PostgreSQL's binaries: PGCAUSAL_PG_BINDIR, else pg_config --bindir, else PATH.
set -eu

data="${PGCAUSAL_NODE_DATA_DIR:?[[nodes]] data_dir is not set for ${PGCAUSAL_NODE:-this node}}"
node="${PGCAUSAL_NODE:?}"
leader_host="${PGCAUSAL_LEADER_HOST:?}"
leader_port="${PGCAUSAL_LEADER_PORT:?}"

if [ "$(id -u)" = 0 ]; then
    owner="$(stat -c %U "$data")"
    if [ "$owner" != root ]; then
        # Same script (its text: its path may not be readable by the owner), same environment,
        # as the owner of the data directory.
        cd /
        exec runuser -p -u "$owner" -- sh -c "$(cat "$0")" "$0" "$@"
    fi
fi

bindir="${PGCAUSAL_PG_BINDIR:-}"
if [ -z "$bindir" ] && command -v pg_config >/dev/null 2>&1; then bindir="$(pg_config --bindir)"; fi
if [ -z "$bindir" ]; then bindir="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)"; fi
pg() { if [ -n "$bindir" ] && [ -x "$bindir/$1" ]; then tool="$bindir/$1"; else tool="$1"; fi; shift; "$tool" "$@"; }

quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/\\\\/\\\\\\\\/g; s/'/\\\\'/g")"; }
repl_user="${PGCAUSAL_REPLICATION_USER:-${PGUSER:-postgres}}"
repl_password="${PGCAUSAL_REPLICATION_PASSWORD:-${PGPASSWORD:-}}"
source_conn="host=$(quote "$leader_host") port=$leader_port user=$(quote "${PGUSER:-postgres}") dbname=postgres application_name=$(quote "$node")"
stream_conn="host=$(quote "$leader_host") port=$leader_port user=$(quote "$repl_user") password=$(quote "$repl_password") application_name=$(quote "$node")"
log="$(dirname "$data")/rejoin-postgres.log"

echo "rejoin $node: following $leader_host:$leader_port (data directory $data)"
if pg pg_ctl status -D "$data" >/dev/null 2>&1; then
    echo "rejoin $node: stopping it"
    pg pg_ctl stop -D "$data" -m fast -w -t 60
fi

# pg_rewind and pg_basebackup bring the leader's configuration files along; this node keeps
# its own (its port, its settings, its ALTER SYSTEM values).
kept="$(mktemp -d)"
for f in "$data"/*.conf; do [ -f "$f" ] && cp -p "$f" "$kept/"; done

rewound=""
if [ "${PGCAUSAL_REJOIN_BASEBACKUP:-0}" != 1 ]; then
    # A freshly promoted leader's control file names its new timeline only after a checkpoint;
    # before it, pg_rewind would see "the same timeline" and rewind nothing.
    pg psql -X -q -d "$source_conn" -c CHECKPOINT
    # pg_rewind runs crash recovery itself when the node died uncleanly (PostgreSQL 13+).
    if pg pg_rewind --target-pgdata="$data" --source-server="$source_conn" --progress 2>&1; then
        rewound=1
    else
        echo "rejoin $node: pg_rewind failed; taking a full base backup instead"
    fi
fi
if [ -z "$rewound" ]; then
    # Keep the old directory until the new one is complete.
    rm -rf "$data.rejoin"
    mkdir -m 700 "$data.rejoin"
    PGPASSWORD="$repl_password" pg pg_basebackup -D "$data.rejoin" -d "$stream_conn" -X stream -c fast
    rm -rf "$data"
    mv "$data.rejoin" "$data"
fi

cp -p "$kept"/*.conf "$data/" 2>/dev/null || true
rm -rf "$kept"

# A follower of the leader: standby.signal, and a primary_conninfo that overrides any earlier
# one (pgcausal's freeze left primary_conninfo = '' in postgresql.auto.conf; last one wins).
touch "$data/standby.signal"
printf "primary_conninfo = %s\n" "$(quote "$stream_conn")" >> "$data/postgresql.auto.conf"
# A fenced node was made read-only; a follower is read-only anyway, and promoted later it
# must take writes (pgcausal resets this on promotion too).
printf "default_transaction_read_only = off\n" >> "$data/postgresql.auto.conf"
rm -f "$data/postmaster.pid"

echo "rejoin $node: starting it as a follower"
pg pg_ctl start -D "$data" -l "$log" -w -t 120
echo "rejoin $node: started"
