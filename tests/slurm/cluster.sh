#!/usr/bin/env bash
# A Slurm cluster on loopback, for the tests and CI: munged, slurmctld and slurmd started by
# hand (no systemd, no cgroups), partitions `cpu` and `gpu` on every node (no GRES: GPU
# requests are mapped away by tests/slurm/profile/).
#
#   tests/slurm/cluster.sh start             # one node (this host); idempotent; installs
#                                            # the Debian packages if missing
#   tests/slurm/cluster.sh start --nodes 2   # and nodes rlver-n1, rlver-n2 (partition
#                                            # `nodes`) beside this host
#   tests/slurm/cluster.sh stop              # stops what start started, through its PID
#                                            # files, and removes its /etc/hosts entry
#
# With --nodes N the host node keeps partitions `cpu` and `gpu` and nodes rlver-n1..N form
# partition `nodes`, so jobs on either side never share a node: the tests start this one
# layout, and two pytest workers use the cluster at once without restarting it under each
# other. Each rlver-n node's slurmd runs in its own UTS namespace (`unshare --uts`) whose
# hostname is the node's name, so its jobs see that name (gloo and submitit take the
# rendezvous address from it); every node listens on 127.0.0.1 on its own Port=, and the
# names resolve to 127.0.0.1 through one marked line in /etc/hosts. A start whose layout
# differs from the running cluster's restarts the controller and the nodes (cold).
#
# State lives in $RLVER_SLURM_DIR (default /tmp/rlver-slurm). The config goes to
# /etc/slurm/slurm.conf, where every client finds it, including srun inside batch jobs
# (which ignores SLURM_CONF from the submitter); a slurm.conf not written by this script
# is never overwritten.
set -euo pipefail

DIR=${RLVER_SLURM_DIR:-/tmp/rlver-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by rlver tests/slurm/cluster.sh"
HOST=$(hostname -s)
NODES=1
HOSTS_MARK="# rlver tests/slurm/cluster.sh"

# The extra nodes' names (--nodes N): rlver-n1..N; none for one node.
node_names() {
  if [ "$NODES" != 1 ]; then seq -f "rlver-n%g" "$NODES"; fi
}

# Every node's name: this host, then the extra nodes.
all_nodes() {
  echo "$HOST"
  node_names
}

install_packages() {
  command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
    && command -v sbatch >/dev/null && command -v munged >/dev/null && return
  echo "cluster.sh: installing slurmctld slurmd slurm-client munge" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
}

# A zombie (a daemon killed whose parent never reaped it) answers kill -0 but is dead.
alive() {
  local pid
  [ -f "$1" ] && pid=$(cat "$1") && kill -0 "$pid" 2>/dev/null \
    && awk '{exit ($3 == "Z")}' "/proc/$pid/stat" 2>/dev/null
}

# slurm.conf for $NODES node(s), on stdout.
conf() {
  local mem_mb spool=$DIR/spool pidfile=$DIR/slurmd.pid log=$DIR/slurmd.log
  mem_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 2048 ))
  # Several slurmd on one machine: each its own spool, PID file and log (%n: node name).
  if [ "$NODES" != 1 ]; then
    spool=$DIR/spool-%n pidfile=$DIR/slurmd-%n.pid log=$DIR/slurmd-%n.log
  fi
  cat <<CONF
$MARK
ClusterName=rlver
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=6817
SlurmdPort=6818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job otherwise waits ~121 s for its credential to expire.
AuthInfo=cred_expire=10
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$pidfile
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, each job takes the node's whole memory.
DefMemPerCPU=1024
SchedulerParameters=batch_sched_delay=0,sched_interval=5,bf_interval=5
MinJobAge=300
ReturnToService=2
MpiDefault=none
CONF
  if [ "$NODES" != 1 ]; then
    # A node that stops answering is marked down after 20 s, not 300 (the node-loss test).
    echo "SlurmdTimeout=20"
  fi
  # The host node on the default port; the extra nodes each on the next ports.
  echo "NodeName=$HOST NodeAddr=127.0.0.1 Port=6818 CPUs=$(nproc) RealMemory=$mem_mb" \
    "State=UNKNOWN"
  local i=1 name
  for name in $(node_names); do
    echo "NodeName=$name NodeHostname=$name NodeAddr=127.0.0.1 Port=$((6818 + i))" \
      "CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN"
    i=$((i + 1))
  done
  echo "PartitionName=cpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP"
  echo "PartitionName=gpu Nodes=$HOST MaxTime=INFINITE State=UP"
  if [ "$NODES" != 1 ]; then
    # LLN: a one-node job goes to the least loaded node, so concurrent jobs spread.
    echo "PartitionName=nodes Nodes=$(node_names | paste -sd,) LLN=YES MaxTime=INFINITE" \
      "State=UP"
  fi
}

# Install the config; a running cluster of another layout is stopped first (its daemons
# read their config only at start), so the start that follows is a cold one.
write_conf() {
  local new
  new=$(conf)
  mkdir -p "$DIR/state" /etc/slurm
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    echo "cluster.sh: $CONF exists and was not written by this script; not touching it" >&2
    exit 1
  fi
  if [ -f "$CONF" ] && [ "$(cat "$CONF")" != "$new" ]; then
    echo "cluster.sh: the running cluster has another layout; restarting it" >&2
    stop_slurm
  fi
  printf '%s\n' "$new" > "$CONF"
}

# The node names resolve to loopback through one marked line (several nodes only).
add_hosts_entry() {
  remove_hosts_entry
  [ "$NODES" = 1 ] && return
  echo "127.0.0.1 $(node_names | tr '\n' ' ')$HOSTS_MARK" >> /etc/hosts
}

# Rewritten in place: /etc/hosts may be a bind mount, which a rename would not update.
remove_hosts_entry() {
  local kept
  grep -qF "$HOSTS_MARK" /etc/hosts || return 0
  kept=$(grep -vF "$HOSTS_MARK" /etc/hosts)
  printf '%s\n' "$kept" > /etc/hosts
}

start_slurmd() {
  local name
  if [ "$NODES" = 1 ]; then
    mkdir -p "$DIR/spool"
    alive "$DIR/slurmd.pid" || slurmd -c -f "$CONF" -N "$HOST"
    return
  fi
  mkdir -p "$DIR/spool-$HOST"
  alive "$DIR/slurmd-$HOST.pid" || slurmd -c -f "$CONF" -N "$HOST"
  for name in $(node_names); do
    mkdir -p "$DIR/spool-$name"
    alive "$DIR/slurmd-$name.pid" \
      || unshare --uts sh -c 'hostname "$1" && exec slurmd -c -f "$2" -N "$1"' sh "$name" "$CONF"
  done
}

start() {
  install_packages
  mkdir -p "$DIR" /run/munge
  chown munge:munge /run/munge
  if ! alive /run/munge/munged.pid; then
    [ -f /etc/munge/munge.key ] || { mungekey -c 2>/dev/null || \
      dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; }
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    runuser -u munge -- /usr/sbin/munged
  fi
  write_conf
  add_hosts_entry
  # A controller started here is a cold start: the saved state's jobs belong to processes
  # of an earlier boot or container (a killed test session), which no slurmd will ever
  # report; recovered as running, they held the node's CPUs and every new job pended
  # (CI, 2026-11-27). -c starts the test cluster with no jobs.
  alive "$DIR/slurmctld.pid" || slurmctld -c -f "$CONF"
  start_slurmd
  local up total
  total=$(all_nodes | wc -l)
  for _ in $(seq 60); do
    # Bounded: a client blocks retrying while no controller answers. A node in two
    # partitions is listed twice, hence sort -u.
    up=$(timeout 5 sinfo -h -N -o '%N %T' 2>/dev/null | sort -u \
      | grep -cE ' (idle|mixed|allocated)$') || true
    if [ "${up:-0}" -ge "$total" ]; then
      echo "cluster.sh: Slurm is up with $total node(s) ($CONF)" >&2
      return 0
    fi
    timeout 5 scontrol update NodeName="$(all_nodes | paste -sd,)" State=RESUME \
      >/dev/null 2>&1 || true
    sleep 1
  done
  echo "cluster.sh: the nodes did not become idle; see $DIR/slurmctld.log and slurmd*.log" >&2
  timeout 5 sinfo >&2 || true
  return 1
}

# Every slurmd (of any layout) and the controller; waits until they are gone, so a start
# that follows binds their ports.
stop_slurm() {
  local pid pids=()
  for pid in "$DIR"/slurmd*.pid "$DIR/slurmctld.pid"; do
    if alive "$pid"; then pids+=("$(cat "$pid")"); kill "${pids[-1]}"; fi
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 100); do
      kill -0 "$pid" 2>/dev/null && awk '{exit ($3 == "Z")}' "/proc/$pid/stat" 2>/dev/null \
        || break
      sleep 0.1
    done
  done
}

stop() {
  stop_slurm
  if alive /run/munge/munged.pid; then kill "$(cat /run/munge/munged.pid)"; fi
  remove_hosts_entry
  echo "cluster.sh: stopped" >&2
}

usage() { echo "usage: $0 start [--nodes N] | stop" >&2; exit 2; }

cmd=${1:-}
shift || true
while [ $# -gt 0 ]; do
  case "$1" in
    --nodes) [ $# -ge 2 ] && [[ "$2" =~ ^[1-9]$ ]] || usage; NODES=$2; shift 2 ;;
    *) usage ;;
  esac
done
case "$cmd" in
  start) start ;;
  stop) stop ;;
  *) usage ;;
esac
