#!/usr/bin/env bash
# Starts a ZeroState cluster on this machine: PostgreSQL, Redis, N nodes (default 3) of
# the same binary sharing them, and nginx in front (round-robin, no sticky sessions,
# WebSocket and SSE proxy settings). Everything listens on 127.0.0.1 and lives in one
# directory (a new temporary one unless --dir is given), so it never touches a system
# PostgreSQL or Redis. README.md's "Cluster" section explains each setting.
#
#   scripts/cluster.sh [start] [--dir DIR] [--nodes N] [--port PORT] [--bin PATH] [-- SERVE_ARGS…]
#   scripts/cluster.sh stop [--dir DIR] [--rm]     stops everything (--rm: deletes DIR)
#   scripts/cluster.sh stop-nodes [--dir DIR]      stops the nodes only (SIGTERM)
#   scripts/cluster.sh start-nodes [--dir DIR]     starts them again on their ports
#   scripts/cluster.sh status [--dir DIR]
#
# `start` prints the cluster's URL (nginx) last, as `ZEROSTATE_CLUSTER_URL=http://…`.
# Without --dir, the other commands use the directory of the last `start`.
# The binary is --bin, else $ZEROSTATE_BIN, else target/release/zerostate if it was
# built, else target/debug/zerostate. PostgreSQL comes from /usr/lib/postgresql/<v>/bin
# (or $ZEROSTATE_PG_BIN); as root it runs as the `postgres` user (it refuses root).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
LAST="${TMPDIR:-/tmp}/zerostate-cluster.last"

cmd=start
case "${1:-}" in
  start|stop|stop-nodes|start-nodes|status) cmd="$1"; shift ;;
esac

dir="" nodes=3 lb_port="" bin="${ZEROSTATE_BIN:-}" remove=0 serve_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir="$2"; shift 2 ;;
    --nodes) nodes="$2"; shift 2 ;;
    --port) lb_port="$2"; shift 2 ;;
    --bin) bin="$2"; shift 2 ;;
    --rm) remove=1; shift ;;
    --) shift; serve_args=("$@"); break ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "cluster.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

die() { echo "cluster.sh: $*" >&2; exit 1; }

if [ "$cmd" != start ] && [ -z "$dir" ]; then
  [ -f "$LAST" ] || die "no --dir given and no cluster started before"
  dir="$(cat "$LAST")"
fi

pg_bin() {
  if [ -n "${ZEROSTATE_PG_BIN:-}" ]; then echo "$ZEROSTATE_PG_BIN"; return; fi
  local best
  best="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -n "$best" ] || die "PostgreSQL is not installed (apt-get install postgresql)"
  echo "$best"
}

# nginx lives in /usr/sbin, which is not on every user's PATH.
nginx_path() {
  command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; }
}

# Runs a PostgreSQL program as `postgres` when we are root.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

# A port nothing on 127.0.0.1 listens on, below the kernel's range of ephemeral ports
# (so no outgoing connection holds it). Another program may still take it before we
# bind it: the callers try again with another one.
free_port() {
  local port low
  low="$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)"
  [ "$low" -gt 11000 ] || low=32768
  while :; do
    port=$(( 10000 + RANDOM % (low - 10000) ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then echo "$port"; return; fi
  done
}

wait_port() { # port what log
  for _ in $(seq 1 600); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "cluster.sh: $2 did not listen on $1; its log:" >&2
  tail -n 40 "$3" >&2 || true
  exit 1
}

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Starts node i (directory $dir/node$i) on its recorded port, or a free one the first
# time, and waits for its "listening" line. A restarted node may find its port still
# held for a moment by the old process: it tries again.
start_node() {
  local i="$1" ndir="$dir/node$1" addr port
  mkdir -p "$ndir"
  for _ in $(seq 1 20); do
    if [ -f "$ndir/port" ]; then addr="127.0.0.1:$(cat "$ndir/port")"; else addr="127.0.0.1:0"; fi
    : > "$ndir/stdout.log"
    # serve_args holds the extra `serve` arguments as shell-quoted words (printf %q).
    # setsid: the node outlives the shell (and its process group) that started it.
    eval "setsid nohup \"\$(cat \"\$dir/bin\")\" serve --addr \"\$addr\" --data-dir \"\$ndir/data\" \
      --database-url \"\$(cat \"\$dir/database_url\")\" --redis-url \"\$(cat \"\$dir/redis_url\")\" \
      --trusted-proxies 127.0.0.1/32 $(cat "$dir/serve_args") \
      >\"\$ndir/stdout.log\" 2>>\"\$ndir/server.log\" </dev/null &"
    echo $! > "$ndir/pid"
    for _ in $(seq 1 900); do
      port="$(sed -n 's/^zerostate listening on http:\/\/[^ ]*:\([0-9][0-9]*\).*/\1/p' "$ndir/stdout.log" | head -n 1)"
      if [ -n "$port" ]; then echo "$port" > "$ndir/port"; return 0; fi
      alive "$ndir/pid" || break
      sleep 0.1
    done
    if alive "$ndir/pid"; then die "node $i did not start within 90 s (see $ndir/server.log)"; fi
    [ -f "$ndir/port" ] || break  # a first start that failed will not do better
    sleep 0.5
  done
  echo "cluster.sh: node $i exited before listening; its log:" >&2
  tail -n 40 "$ndir/server.log" >&2
  exit 1
}

stop_pidfile() { # pidfile signal
  alive "$1" || return 0
  local pid; pid="$(cat "$1")"
  kill "-$2" "$pid" 2>/dev/null || true
  for _ in $(seq 1 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

stop_nodes() {
  for ndir in "$dir"/node[0-9]*; do
    if [ -d "$ndir" ]; then stop_pidfile "$ndir/pid" TERM; fi
  done
}

start_nodes() {
  local n; n="$(cat "$dir/node_count")"
  # Started together, as an orchestrator would: they share the migrations and the
  # signing key through the database.
  local pids=()
  for i in $(seq 1 "$n"); do start_node "$i" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || die "a node failed to start"; done
}

write_nginx_conf() {
  local ndir="$dir/nginx" user="" servers=""
  if [ "$(id -u)" -eq 0 ]; then user="user root;"; fi
  for node in "$dir"/node[0-9]*; do
    servers+="        server 127.0.0.1:$(cat "$node/port") max_fails=1 fail_timeout=1s;"$'\n'
  done
  cat > "$ndir/nginx.conf" <<CONF
$user
daemon on;
worker_processes auto;
pid $ndir/nginx.pid;
error_log $ndir/error.log warn;
events { worker_connections 4096; }
http {
    access_log $ndir/access.log;
    client_body_temp_path $ndir/tmp/body;
    proxy_temp_path $ndir/tmp/proxy;
    fastcgi_temp_path $ndir/tmp/fastcgi;
    uwsgi_temp_path $ndir/tmp/uwsgi;
    scgi_temp_path $ndir/tmp/scgi;

    # A WebSocket upgrade passes "Connection: upgrade" on; any other request drops the
    # header so the upstream connection can be kept alive.
    map \$http_upgrade \$connection_upgrade {
        default upgrade;
        ''      '';
    }

    # Round-robin, no sticky sessions: any node serves any request. A node that
    # refuses a connection is skipped for 1 s and the request goes to the next one.
    upstream zerostate {
$servers        keepalive 32;
    }

    server {
        listen 127.0.0.1:$lb_port;
        # The API's own limit is 64 KiB for real-time publishes and 1 MiB elsewhere.
        client_max_body_size 1m;

        location / {
            proxy_pass http://zerostate;
            proxy_http_version 1.1;
            proxy_set_header Upgrade \$http_upgrade;
            proxy_set_header Connection \$connection_upgrade;
            # The browser's Host, so the node sees its own origin (Origin checks).
            proxy_set_header Host \$http_host;
            # The client's address, believed by the nodes (--trusted-proxies 127.0.0.1).
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            # Above the client's 25 s ping and the SSE heartbeat, below the node's 75 s
            # idle close: a quiet socket is never cut by the proxy first.
            proxy_read_timeout 120s;
            proxy_send_timeout 120s;
            # Server-Sent Events must reach the browser as they are written.
            proxy_buffering off;
            proxy_request_buffering off;
        }
    }
}
CONF
}

case "$cmd" in
start)
  if [ -z "$bin" ]; then
    if [ -x "$ROOT/target/release/zerostate" ]; then bin="$ROOT/target/release/zerostate"
    else bin="$ROOT/target/debug/zerostate"; fi
  fi
  [ -x "$bin" ] || die "no binary at $bin (cargo build --release)"
  command -v redis-server >/dev/null || die "redis-server is not installed (apt-get install redis-server)"
  nginx_bin="$(nginx_path)" || die "nginx is not installed (apt-get install nginx-light)"
  PG="$(pg_bin)"
  if [ -z "$dir" ]; then dir="$(mktemp -d "${TMPDIR:-/tmp}/zerostate-cluster.XXXXXX")"; fi
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  [ -e "$dir/node_count" ] && die "$dir already holds a cluster (stop it, or use start-nodes)"
  echo "$dir" > "$LAST"
  # A start that fails half-way stops what it had started (the directory stays, with
  # the logs).
  started=0
  trap 'if [ "$started" != 1 ]; then echo "cluster.sh: start failed; stopping what was started (logs in $dir)" >&2; "$0" stop --dir "$dir" >/dev/null 2>&1 || true; fi' EXIT
  echo "$bin" > "$dir/bin"
  echo "$nodes" > "$dir/node_count"
  : > "$dir/serve_args"
  if [ ${#serve_args[@]} -gt 0 ]; then printf '%q ' "${serve_args[@]}" > "$dir/serve_args"; fi
  port_given=0
  if [ -n "$lb_port" ]; then port_given=1; else lb_port="$(free_port)"; fi

  echo "== PostgreSQL"
  mkdir -p "$dir/pg"
  if [ "$(id -u)" -eq 0 ]; then
    # PostgreSQL runs as `postgres`: it must reach its own directory inside ours.
    chmod o+x "$dir"
    chown postgres: "$dir/pg"
  fi
  as_pg "$PG/initdb" -D "$dir/pg/data" -U postgres -A trust -E UTF8 >"$dir/pg/initdb.log" 2>&1 \
    || { cat "$dir/pg/initdb.log" >&2; die "initdb failed"; }
  for attempt in 1 2 3 4 5; do
    pg_port="$(free_port)"
    if as_pg "$PG/pg_ctl" -D "$dir/pg/data" -l "$dir/pg/postgres.log" -w -t 60 \
      -o "-p $pg_port -k $dir/pg -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null; then
      break
    fi
    # Most likely the port was taken meanwhile: another one.
    [ "$attempt" -lt 5 ] || { tail -n 40 "$dir/pg/postgres.log" >&2; die "PostgreSQL did not start"; }
  done
  as_pg "$PG/createdb" -h 127.0.0.1 -p "$pg_port" -U postgres zerostate
  echo "postgres://postgres@127.0.0.1:$pg_port/zerostate" > "$dir/database_url"

  echo "== Redis"
  mkdir -p "$dir/redis"
  for attempt in 1 2 3 4 5; do
    redis_port="$(free_port)"
    # In the foreground (not --daemonize) so that a failed start is seen at once.
    setsid nohup redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir/redis" \
      --appendonly yes --appendfsync always --save "" --protected-mode no \
      --logfile "$dir/redis/redis.log" >/dev/null 2>&1 </dev/null &
    echo $! > "$dir/redis/redis.pid"
    for _ in $(seq 1 600); do
      if (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null || ! alive "$dir/redis/redis.pid"; then break; fi
      sleep 0.1
    done
    if alive "$dir/redis/redis.pid" && (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null; then break; fi
    stop_pidfile "$dir/redis/redis.pid" TERM
    [ "$attempt" -lt 5 ] || { tail -n 40 "$dir/redis/redis.log" >&2; die "Redis did not start"; }
  done
  echo "redis://127.0.0.1:$redis_port" > "$dir/redis_url"

  echo "== $nodes nodes ($bin)"
  start_nodes

  echo "== nginx"
  mkdir -p "$dir/nginx/tmp"
  chmod 0777 "$dir/nginx" "$dir/nginx/tmp"
  for attempt in 1 2 3 4 5; do
    write_nginx_conf
    if "$nginx_bin" -p "$dir/nginx" -c "$dir/nginx/nginx.conf" -e "$dir/nginx/error.log"; then break; fi
    # A port of our own choosing may have been taken meanwhile: another one.
    [ "$port_given" -eq 0 ] && [ "$attempt" -lt 5 ] || die "nginx did not start (see $dir/nginx/error.log)"
    lb_port="$(free_port)"
  done
  echo "$lb_port" > "$dir/lb_port"
  wait_port "$lb_port" nginx "$dir/nginx/error.log"
  echo "http://127.0.0.1:$lb_port" > "$dir/url"

  for ndir in "$dir"/node[0-9]*; do echo "node $(basename "$ndir"): http://127.0.0.1:$(cat "$ndir/port") (log $ndir/server.log)"; done
  echo "database: $(cat "$dir/database_url")"
  echo "redis:    $(cat "$dir/redis_url")"
  echo "stop with: $0 stop --dir $dir"
  echo "ZEROSTATE_CLUSTER_URL=http://127.0.0.1:$lb_port"
  started=1
  ;;
stop-nodes)
  stop_nodes
  ;;
start-nodes)
  start_nodes
  ;;
stop)
  stop_nodes
  if [ -f "$dir/nginx/nginx.pid" ]; then stop_pidfile "$dir/nginx/nginx.pid" QUIT; fi
  stop_pidfile "$dir/redis/redis.pid" TERM
  if [ -f "$dir/pg/data/postmaster.pid" ]; then
    as_pg "$(pg_bin)/pg_ctl" -D "$dir/pg/data" -m fast -w stop >/dev/null || true
  fi
  if [ "$remove" -eq 1 ]; then rm -rf "$dir"; fi
  if [ -f "$LAST" ] && [ "$(cat "$LAST")" = "$dir" ]; then rm -f "$LAST"; fi
  echo "stopped the cluster in $dir"
  ;;
status)
  for ndir in "$dir"/node[0-9]*; do
    if alive "$ndir/pid"; then s=up; else s=down; fi
    echo "$(basename "$ndir"): $s on 127.0.0.1:$(cat "$ndir/port" 2>/dev/null || echo '?')"
  done
  if alive "$dir/nginx/nginx.pid"; then echo "nginx: up at $(cat "$dir/url")"; else echo "nginx: down"; fi
  if alive "$dir/redis/redis.pid"; then echo "redis: up"; else echo "redis: down"; fi
  if [ -f "$dir/pg/data/postmaster.pid" ]; then echo "postgres: up"; else echo "postgres: down"; fi
  ;;
esac
