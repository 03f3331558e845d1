#!/usr/bin/env bash
# `make run-cluster`: the shop on a local 3-node JetStream cluster.
#
# Starts the nodes of deploy/nats-cluster/ (n1 to n3: clients on 4222-4224, routes on
# 6222-6224, monitoring on 8222-8224, stores in data/cluster/<node>), secured with the
# keys of data/auth like `make run`; waits until every node is healthy and all three
# agree on a meta leader; then runs `shop run --replicas 3` in the foreground against
# the three URLs, its databases in data/cluster/shop. Ctrl-C stops the shop gracefully,
# then the nodes (SIGTERM, then SIGKILL after a deadline). Expects `make auth` to have
# run (`make run-cluster` runs it first).
#
# Environment: NATS_SERVER_BIN (default: .tools/nats-server-path), SHOP_BIN (default
# ./target/fast/shop), NATS_READY_SECONDS (default 30), SHOP_LEASE_TTL (default 30s).
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

server_bin="${NATS_SERVER_BIN:-$(cat .tools/nats-server-path)}"
shop_bin="${SHOP_BIN:-./target/fast/shop}"
ready_seconds="${NATS_READY_SECONDS:-30}"
auth_dir=data/auth
cluster_dir=data/cluster
nodes=(n1 n2 n3)
client_ports=(4222 4223 4224)
route_ports=(6222 6223 6224)
http_ports=(8222 8223 8224)
urls="nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"

log() { echo "run-cluster: $*" >&2; }

[[ -f "$auth_dir/auth.conf" ]] || { log "no $auth_dir/auth.conf: run \`make auth\` (or use \`make run-cluster\`)"; exit 1; }
[[ -x "$shop_bin" ]] || { log "no shop binary at $shop_bin: run \`make run-cluster\`"; exit 1; }

mkdir -p "$cluster_dir"

# Nodes of an earlier run whose script was killed before it could stop them.
for node in "${nodes[@]}"; do
    pid_file="$cluster_dir/$node.pid"
    if [[ -f "$pid_file" ]] && kill -0 "$(cat "$pid_file")" 2>/dev/null \
        && grep -q nats-server "/proc/$(cat "$pid_file")/cmdline" 2>/dev/null; then
        log "stopping $node left running by an earlier run (pid $(cat "$pid_file"))"
        kill -TERM "$(cat "$pid_file")" || true
    fi
done

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
deadline=$((SECONDS + 10))
for port in "${client_ports[@]}" "${route_ports[@]}" "${http_ports[@]}"; do
    while port_taken "$port"; do
        if ((SECONDS >= deadline)); then
            log "port $port is in use; the cluster needs 4222-4224, 6222-6224 and 8222-8224."
            log "Is \`make run\`'s single server up? Stop it first: kill \$(cat data/nats-server.pid)"
            exit 1
        fi
        sleep 0.2
    done
done

# The system account's one user. The password is made once and kept, so a `nats`
# context saved with it keeps working; delete data/cluster/sys.password to rotate.
(
    umask 077
    if [[ ! -s "$cluster_dir/sys.password" ]]; then
        head -c 24 /dev/urandom | base64 | tr -d '/+=\n' >"$cluster_dir/sys.password"
    fi
    printf '%s\n' \
        '# Written by scripts/run-cluster.sh: the system account, for `nats server ls`.' \
        'accounts {' \
        '  SYS {' \
        "    users = [ { user: sys, password: \"$(cat "$cluster_dir/sys.password")\" } ]" \
        '  }' \
        '}' \
        'system_account: SYS' >"$cluster_dir/system.conf"
)

shop_status=0
stop_nodes() {
    local pids=() node pid_file
    for node in "${nodes[@]}"; do
        pid_file="$cluster_dir/$node.pid"
        [[ -f "$pid_file" ]] || continue
        local pid
        pid="$(cat "$pid_file")"
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        rm -f "$pid_file"
    done
    ((${#pids[@]})) || return 0
    log "stopping the nodes (pids ${pids[*]})"
    local stop_deadline=$((SECONDS + 15)) pid
    for pid in "${pids[@]}"; do
        while kill -0 "$pid" 2>/dev/null; do
            if ((SECONDS >= stop_deadline)); then
                log "pid $pid did not stop within 15s; killing it"
                kill -KILL "$pid" 2>/dev/null || true
                break
            fi
            sleep 0.2
        done
    done
    log "nodes stopped; their stores stay in $cluster_dir (make clean-data wipes them)"
}
trap stop_nodes EXIT
# The shop in the foreground gets Ctrl-C's SIGINT itself and stops gracefully; the trap
# only runs once it has, so the nodes are still there while it drains its outbox.
trap 'exit 130' INT
trap 'exit 143' TERM

for i in "${!nodes[@]}"; do
    node="${nodes[$i]}"
    mkdir -p "$cluster_dir/$node"
    # A session of their own, so the terminal's Ctrl-C reaches the shop, not the nodes:
    # they must outlive the shop's graceful stop, and this script stops them after it.
    setsid "$server_bin" --config "deploy/nats-cluster/$node.conf" \
        >"$cluster_dir/$node.log" 2>&1 </dev/null &
    echo $! >"$cluster_dir/$node.pid"
done
log "started ${nodes[*]} (logs and pids in $cluster_dir/)"

# The meta leader a node's /jsz reports, or nothing.
meta_leader() {
    curl -sf "http://127.0.0.1:$1/jsz" 2>/dev/null | tr -d ' \n' |
        sed -n 's/.*"meta_cluster":{[^}]*"leader":"\([^"]*\)".*/\1/p'
}

deadline=$((SECONDS + ready_seconds))
while :; do
    leaders=()
    for i in "${!nodes[@]}"; do
        pid="$(cat "$cluster_dir/${nodes[$i]}.pid")"
        if ! kill -0 "$pid" 2>/dev/null; then
            log "${nodes[$i]} exited; last log lines:"
            tail -n 20 "$cluster_dir/${nodes[$i]}.log" >&2
            exit 1
        fi
        if curl -sf "http://127.0.0.1:${http_ports[$i]}/healthz" >/dev/null; then
            leaders+=("$(meta_leader "${http_ports[$i]}")")
        fi
    done
    if ((${#leaders[@]} == ${#nodes[@]})) && [[ -n "${leaders[0]}" ]] \
        && [[ "${leaders[0]}" == "${leaders[1]}" && "${leaders[1]}" == "${leaders[2]}" ]]; then
        log "cluster formed: every node healthy, meta leader ${leaders[0]}"
        break
    fi
    if ((SECONDS >= deadline)); then
        log "no agreed meta leader after ${ready_seconds}s (seen: ${leaders[*]:-none}); last log lines:"
        for node in "${nodes[@]}"; do
            echo "--- $node ---" >&2
            tail -n 10 "$cluster_dir/$node.log" >&2
        done
        exit 1
    fi
    sleep 0.2
done

log "the shop connects to $urls, every stream and KV bucket on 3 replicas; operators use"
log "  nats --server $urls --nkey $auth_dir/operator.nk --inbox-prefix _INBOX_operator …"
log "  nats --server $urls --user sys --password \"\$(cat $cluster_dir/sys.password)\" server ls"
# The services' sled databases apart from `make run`'s (./data/<service>): their inboxes
# and outboxes belong to the streams of the cluster, not to those of the single server.
# Leases of 30 s (not the default 10 s) on a cluster: the node leading SHOP_GROUPS can die,
# and the election after it takes 4-9 s during which no lease renews (docs/RELIABILITY.md,
# "On a 3-node cluster"); SHOP_LEASE_TTL overrides it.
NATS_URL="$urls" SHOP_LEASE_TTL="${SHOP_LEASE_TTL:-30s}" "$shop_bin" --auth-dir "$auth_dir" --data-dir "$cluster_dir/shop" \
    run --replicas 3 || shop_status=$?
exit "$shop_status"
