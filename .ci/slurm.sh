#!/usr/bin/env bash
# CI: a real single-node SLURM cluster on localhost (Debian's slurmctld, slurmd, munge), for the sweep
# tests (tests/study/test_sweep.py). Run as root, before the test command; it returns once `sinfo` shows the
# node idle, or fails with the daemons' logs. Idempotent: an already running cluster is kept.
# Addresses are 127.0.0.1, so the host name need not resolve.
#   bash .ci/slurm.sh            # install, configure, start, wait
# No cgroups or systemd are needed (proctrack/linuxproc, task/none), so it also runs in a container.
set -euo pipefail

host=$(hostname -s)
cpus=$(nproc)
mem_mb=$(awk '/MemTotal/ {m = int($2 / 1024) - 2048; print (m > 20000 ? 20000 : m)}' /proc/meminfo)  # below 24 GiB, room for the OS
log=/var/log/slurm-ci
conf=/etc/slurm/slurm.conf

if command -v sinfo >/dev/null && sinfo -h -N -o '%T' 2>/dev/null | grep -qx idle; then
    echo "slurm.sh: a cluster is already up:"; sinfo; exit 0
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
        || ! command -v sbatch >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends slurmctld slurmd slurm-client munge
fi

mkdir -p /etc/slurm "$log" /var/spool/slurmctld /var/spool/slurmd /run/munge /var/log/munge
chown slurm:slurm /var/spool/slurmctld "$log"
chown munge:munge /run/munge /var/log/munge
[[ -s /etc/munge/munge.key ]] || { dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null; }
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key

cat > "$conf" <<EOF
# Written by .ci/slurm.sh: one node, this host, no accounting database.
ClusterName=ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=slurm
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$log/slurmctld.log
SlurmdLogFile=$log/slurmd.log
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
JobRequeue=1
MinJobAge=600
# A submitted job waits for the main scheduling pass (queued, as on a busy cluster); every 2 s
# instead of the default 60, so that the tests do not wait a minute for each start
SchedulerParameters=defer_batch,sched_interval=2
MpiDefault=none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=ci Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF

pgrep -x munged >/dev/null || runuser -u munge -- munged
pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 60); do
    state=$(sinfo -h -N -o '%T' 2>/dev/null || true)
    if [[ "$state" == idle ]]; then
        echo "slurm.sh: node $host idle ($cpus CPUs, ${mem_mb} MB)"; sinfo; exit 0
    fi
    if [[ "$state" == down* || "$state" == drain* ]]; then
        scontrol update nodename="$host" state=resume 2>/dev/null || true
    fi
    sleep 1
done
echo "slurm.sh: the node did not become idle (state: ${state:-none}); logs follow" >&2
tail -n 30 "$log"/slurmctld.log "$log"/slurmd.log >&2 || true
exit 1
