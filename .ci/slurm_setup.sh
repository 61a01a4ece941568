#!/usr/bin/env bash
# Single-node SLURM on localhost for the SLURM profile test (Debian slurm-wlm 22.05 + munge), idempotent.
#
#   bash .ci/slurm_setup.sh          # install if needed, write config, start munged/slurmctld/slurmd
#   bash .ci/slurm_setup.sh stop     # stop the daemons this script started (by PID file)
#
# Config goes to $SLURM_CONF_DIR (default /etc/slurm); state, logs and PID files to $SLURM_STATE_DIR.
# The node advertises 2 fake GPUs (gres count only, no device files) so GPU requests can be scheduled.
set -euo pipefail
CONF_DIR=${SLURM_CONF_DIR:-/etc/slurm}
STATE_DIR=${SLURM_STATE_DIR:-/tmp/nanochat-slurm}
HOST=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))

stop() {
  for name in slurmd slurmctld munged; do
    pidfile="$STATE_DIR/$name.pid"
    if [ -f "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
      pid=$(cat "$pidfile")
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      echo "stopped $name (pid $pid)"
    fi
    rm -f "$pidfile"
  done
}
if [ "${1:-start}" = "stop" ]; then stop; exit 0; fi

if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq slurm-wlm munge >/dev/null
fi

mkdir -p "$CONF_DIR" "$STATE_DIR/state" "$STATE_DIR/spool" /run/munge /var/log/munge /var/lib/munge /etc/munge
[ -s /etc/munge/munge.key ] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; chmod 400 /etc/munge/munge.key; }
chown -R munge:munge /etc/munge /run/munge /var/log/munge /var/lib/munge 2>/dev/null || true

cat > "$CONF_DIR/slurm.conf" <<CONF
# Written by .ci/slurm_setup.sh: one node, no accounting database (status via squeue), fake GPUs.
ClusterName=nanochat
SlurmctldHost=$HOST
AuthType=auth/munge
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
# Finished jobs stay visible to squeue for 10 minutes (the plugin's squeue status check needs that).
MinJobAge=600
SchedulerParameters=sched_interval=1
SlurmctldPidFile=$STATE_DIR/slurmctld.pid
SlurmdPidFile=$STATE_DIR/slurmd.pid
SlurmdSpoolDir=$STATE_DIR/spool
StateSaveLocation=$STATE_DIR/state
SlurmctldLogFile=$STATE_DIR/slurmctld.log
SlurmdLogFile=$STATE_DIR/slurmd.log
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
# Two stand-in device files: slurmd needs a File per GPU, nothing opens them (no cgroup device constraint).
printf 'AutoDetect=off\nNodeName=%s Name=gpu File=/dev/null\nNodeName=%s Name=gpu File=/dev/zero\n' "$HOST" "$HOST" > "$CONF_DIR/gres.conf"

running() { [ -f "$STATE_DIR/$1.pid" ] && kill -0 "$(cat "$STATE_DIR/$1.pid")" 2>/dev/null; }
if ! running munged; then
  munged --force --pid-file="$STATE_DIR/munged.pid" 2>/dev/null || munged --force
  [ -f "$STATE_DIR/munged.pid" ] || pgrep -n munged > "$STATE_DIR/munged.pid"
fi
running slurmctld || slurmctld -f "$CONF_DIR/slurm.conf"
running slurmd || slurmd -f "$CONF_DIR/slurm.conf"
for _ in $(seq 30); do
  if sinfo -h -o %T 2>/dev/null | grep -qE "idle|mixed|allocated"; then
    echo "slurm up: $(sinfo -h -o '%P %D %T %G')"; exit 0
  fi
  scontrol update nodename="$HOST" state=idle >/dev/null 2>&1 || true
  sleep 1
done
echo "slurm did not come up; see $STATE_DIR/slurmctld.log and slurmd.log" >&2
exit 1
