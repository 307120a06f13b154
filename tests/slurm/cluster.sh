#!/usr/bin/env bash
# A one-node Slurm cluster on loopback, for the tests and CI: munged, slurmctld and slurmd
# started by hand (no systemd, no cgroups), partitions `cpu` and `gpu` on the same node
# (no GRES: GPU requests are mapped away by tests/slurm/profile/).
#
#   tests/slurm/cluster.sh start   # idempotent; installs the Debian packages if missing
#   tests/slurm/cluster.sh stop    # stops what start started, through its PID files
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

write_conf() {
  local mem_mb
  mem_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 2048 ))
  mkdir -p "$DIR/state" "$DIR/spool" /etc/slurm
  if [ -f "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
    echo "cluster.sh: $CONF exists and was not written by this script; not touching it" >&2
    exit 1
  fi
  cat > "$CONF" <<CONF
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
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
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
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
PartitionName=cpu Nodes=ALL Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=ALL MaxTime=INFINITE State=UP
CONF
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
  # A controller started here is a cold start: the saved state's jobs belong to processes
  # of an earlier boot or container (a killed test session), which no slurmd will ever
  # report; recovered as running, they held the node's CPUs and every new job pended
  # (CI, 2026-11-27). -c starts the test cluster with no jobs.
  alive "$DIR/slurmctld.pid" || slurmctld -c -f "$CONF"
  alive "$DIR/slurmd.pid" || slurmd -c -f "$CONF" -N "$HOST"
  for _ in $(seq 60); do
    # Bounded: a client blocks retrying while no controller answers.
    if timeout 5 sinfo -h -o %T 2>/dev/null | grep -qE '^(idle|mixed|allocated)'; then
      echo "cluster.sh: Slurm is up ($CONF)" >&2
      return 0
    fi
    timeout 5 scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
    sleep 1
  done
  echo "cluster.sh: the node did not become idle; see $DIR/slurmctld.log and slurmd.log" >&2
  timeout 5 sinfo >&2 || true
  return 1
}

stop() {
  for pid in "$DIR/slurmd.pid" "$DIR/slurmctld.pid" /run/munge/munged.pid; do
    if alive "$pid"; then kill "$(cat "$pid")"; fi
  done
  echo "cluster.sh: stopped" >&2
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
