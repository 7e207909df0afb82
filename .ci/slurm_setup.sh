#!/usr/bin/env bash
# A single-node Slurm cluster on this machine (Debian's slurm-wlm + munge), for the slurm
# executor's test. Idempotent: installs what is missing, (re)writes the config only if it
# changed, starts munged/slurmctld/slurmd only if they are not answering, and waits until the
# node is idle. Needs root and apt-get; no systemd (works in containers).
#
#   sudo .ci/slurm_setup.sh          # then: sinfo; sbatch --wrap 'hostname'
set -euo pipefail

log() { echo "slurm_setup: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "must run as root (apt-get, daemons)"; exit 1; }

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# --- munge: authentication between the daemons and the client commands
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0400 /etc/munge/munge.key
chmod 0755 /run/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  pkill_pid=$(cat /run/munge/munged.pid 2>/dev/null || true)
  [ -n "$pkill_pid" ] && kill "$pkill_pid" 2>/dev/null || true
  runuser -u munge -- /usr/sbin/munged --force
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.2; done
  munge -n | unmunge >/dev/null || { log "munged does not answer"; exit 1; }
fi

# --- slurm.conf: this host as controller and only compute node
host=$(hostname -s)
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
conf_dir=/etc/slurm
mkdir -p "$conf_dir" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
chown slurm:slurm /var/spool/slurmctld /var/log/slurm 2>/dev/null || true
new_conf=$(cat <<EOF
# Written by .ci/slurm_setup.sh: a single-node cluster for tests.
ClusterName=ci
SlurmctldHost=${host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
# No cgroups in a container: track processes by pid, no task confinement.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
MpiDefault=none
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
NodeName=${host} NodeAddr=127.0.0.1 CPUs=${cpus} RealMemory=${mem} State=UNKNOWN
PartitionName=debug Nodes=${host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
EOF
)
changed=0
if [ ! -f "$conf_dir/slurm.conf" ] || [ "$(cat "$conf_dir/slurm.conf")" != "$new_conf" ]; then
  printf '%s\n' "$new_conf" > "$conf_dir/slurm.conf"
  changed=1
fi
# slurm 22.05 has no "disabled" cgroup plugin; without cgroup.conf and with proctrack/linuxproc
# and task/none it never touches cgroups. Remove one left by an earlier version of this script.
if [ -f "$conf_dir/cgroup.conf" ] && grep -q "CgroupPlugin=disabled" "$conf_dir/cgroup.conf"; then
  rm -f "$conf_dir/cgroup.conf"
fi

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
if [ "$changed" = 1 ]; then
  for pidfile in /run/slurm/slurmd.pid /run/slurm/slurmctld.pid; do
    alive "$pidfile" && kill "$(cat "$pidfile")" && sleep 1 || true
  done
fi
if ! alive /run/slurm/slurmctld.pid; then
  log "starting slurmctld"
  /usr/sbin/slurmctld -i
fi
if ! alive /run/slurm/slurmd.pid; then
  log "starting slurmd"
  /usr/sbin/slurmd
fi

for _ in $(seq 60); do
  state=$(sinfo -h -n "$host" -o '%T' 2>/dev/null || true)
  case "$state" in
    idle*|mixed*|allocated*) log "node $host is $state"; exit 0 ;;
    down*|drain*) scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true ;;
  esac
  sleep 1
done
log "node $host did not become idle (state: ${state:-none}); see /var/log/slurm/*.log"
exit 1
