#!/usr/bin/env bash
# A real, throw-away SLURM cluster on this one machine, for testing job scripts end to end:
# munge + slurmctld + one or two slurmd, partitions a100 (default) and a40, 4 fake GPUs per node,
# requeue on the trainer's checkpoint-and-exit status. Needs root (apt-get, daemons as root).
#
#   scripts/slurm/cluster.sh start     # install if missing, configure, start, wait until idle
#   scripts/slurm/cluster.sh status    # daemons, sinfo, squeue
#   scripts/slurm/cluster.sh env       # prints: export SLURM_CONF=...   (eval "$(... env)")
#   scripts/slurm/cluster.sh stop      # stop what start started, restore /etc/hosts
#
# Settings (environment, read by start):
#   SAM_SLURM_STATE         state folder (config, spool, logs)    default /tmp/sam_trainer-slurm
#   SAM_SLURM_REQUEUE_EXIT  exit status that requeues a job        default 42
#                           (`none`: no RequeueExit, as on most real clusters)
#   SAM_SLURM_NODES         slurmd "nodes" on this machine (1|2)   default 1
#   SAM_SLURM_CPUS          CPUs each node advertises              default 8
#   SAM_SLURM_GPUS          fake GPUs per node (/dev/null links)   default 4
# See scripts/slurm/README.md.
set -euo pipefail

STATE=${SAM_SLURM_STATE:-/tmp/sam_trainer-slurm}
REQUEUE_EXIT=${SAM_SLURM_REQUEUE_EXIT:-42}
NODES=${SAM_SLURM_NODES:-1}
CPUS=${SAM_SLURM_CPUS:-8}
GPUS=${SAM_SLURM_GPUS:-4}
CONF=$STATE/slurm.conf
HOSTS_MARK="# sam_trainer slurm harness"
PACKAGES=(slurmctld slurmd slurm-client munge)

log() { printf '[slurm-harness] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

node_name() { printf 'samnode%s' "$1"; }
node_list() { local i out=(); for ((i = 1; i <= NODES; i++)); do out+=("$(node_name "$i")"); done; local IFS=,; echo "${out[*]}"; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

install_packages() {
    local missing=() p
    for p in "${PACKAGES[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || die "missing packages ${missing[*]}: run as root"
    log "installing ${missing[*]}"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

write_config() {
    local i name ctl_host requeue_exit="RequeueExit=$REQUEUE_EXIT"
    ctl_host=$(hostname -s)
    [ "$REQUEUE_EXIT" = none ] && requeue_exit="# no RequeueExit: jobs requeue themselves (scontrol requeue)"
    mkdir -p "$STATE"/{ctld,log,dev}
    for ((i = 1; i <= NODES; i++)); do mkdir -p "$STATE/spool/$(node_name "$i")"; done
    # Fake GPU device files: symlinks to /dev/null make slurmd set CUDA_VISIBLE_DEVICES.
    for ((i = 0; i < GPUS; i++)); do ln -sfn /dev/null "$STATE/dev/nvidia$i"; done

    cat > "$CONF" <<CONF
# Written by scripts/slurm/cluster.sh; test cluster on one machine.
ClusterName=samtest
SlurmctldHost=$ctl_host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/spool/%n
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd-%n.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd-%n.log
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=5
ProctrackType=proctrack/cgroup
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MailProg=/bin/true
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SchedulerParameters=sched_interval=2,bf_interval=2
# A batch script exiting with RequeueExit's status is requeued (if set).
JobRequeue=1
$requeue_exit
ReturnToService=2
KillWait=5
MinJobAge=600
GresTypes=gpu
CONF
    : > "$STATE/gres.conf"
    for ((i = 1; i <= NODES; i++)); do
        name=$(node_name "$i")
        echo "NodeName=$name NodeAddr=127.0.0.1 Port=$((6817 + i)) CPUs=$CPUS RealMemory=64000 Gres=gpu:$GPUS State=UNKNOWN" >> "$CONF"
        echo "NodeName=$name Name=gpu File=$STATE/dev/nvidia[0-$((GPUS - 1))]" >> "$STATE/gres.conf"
    done
    cat >> "$CONF" <<CONF
PartitionName=a100 Nodes=ALL Default=YES MaxTime=56:00:00 State=UP
PartitionName=a40 Nodes=ALL MaxTime=56:00:00 State=UP
CONF
    cat > "$STATE/cgroup.conf" <<CONF
CgroupPlugin=autodetect
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=no
ConstrainRAMSpace=no
ConstrainDevices=no
CONF
}

add_hosts() {
    # Node names must resolve: jobs take their first node as the rendezvous host.
    local i name
    [ -f "$STATE/hosts.orig" ] || cp /etc/hosts "$STATE/hosts.orig"
    for ((i = 1; i <= NODES; i++)); do
        name=$(node_name "$i")
        getent hosts "$name" >/dev/null || echo "127.0.0.1 $name $HOSTS_MARK" >> /etc/hosts
    done
}

remove_hosts() {
    if grep -q "$HOSTS_MARK" /etc/hosts 2>/dev/null; then
        # In place (cat >), not mv: /etc/hosts may be a bind mount.
        grep -v "$HOSTS_MARK" /etc/hosts > "$STATE/hosts.new" && cat "$STATE/hosts.new" > /etc/hosts
    fi
    rm -f "$STATE/hosts.orig" "$STATE/hosts.new"
}

start_munge() {
    if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then return 0; fi
    install -d -o munge -g munge -m 0755 /run/munge
    [ -s /etc/munge/munge.key ] || die "/etc/munge/munge.key missing (reinstall munge)"
    runuser -u munge -- /usr/sbin/munged
    touch "$STATE/munge.started"
    local t
    for t in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.1; done
    die "munged did not come up"
}

cmd_start() {
    [ "$(id -u)" -eq 0 ] || die "run as root (daemons and jobs run as root)"
    case "$NODES" in 1|2) ;; *) die "SAM_SLURM_NODES must be 1 or 2, got $NODES" ;; esac
    if alive "$STATE/slurmctld.pid"; then log "already running (state $STATE)"; cmd_env; return 0; fi
    install_packages
    write_config
    add_hosts
    start_munge
    export SLURM_CONF=$CONF
    setsid /usr/sbin/slurmctld -D -i -f "$CONF" > "$STATE/log/slurmctld.out" 2>&1 < /dev/null &
    echo $! > "$STATE/slurmctld.pid"
    local i name t state
    for ((i = 1; i <= NODES; i++)); do
        name=$(node_name "$i")
        setsid /usr/sbin/slurmd -D -N "$name" -f "$CONF" > "$STATE/log/slurmd-$name.out" 2>&1 < /dev/null &
        echo $! > "$STATE/slurmd-$name.run.pid"
    done
    for t in $(seq 100); do
        state=$(sinfo -h -N -o '%T' 2>/dev/null | sort -u | tr '\n' ' ')
        if [ "$state" = "idle " ]; then
            log "up: $(node_list) idle, partitions a100 (default) and a40, RequeueExit=$REQUEUE_EXIT"
            cmd_env
            return 0
        fi
        sleep 0.2
    done
    log "nodes not idle after 20 s (state: ${state:-none}); logs in $STATE/log"
    tail -n 20 "$STATE"/log/*.log >&2 || true
    cmd_stop
    exit 1
}

stop_pid_file() {
    local f=$1 pid t
    [ -f "$f" ] || return 0
    pid=$(cat "$f")
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for t in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$f"
}

cmd_stop() {
    local f
    if [ -f "$CONF" ] && alive "$STATE/slurmctld.pid"; then
        SLURM_CONF=$CONF scancel --full --quiet --user=root 2>/dev/null || true
    fi
    for f in "$STATE"/slurmd-*.run.pid; do [ -e "$f" ] && stop_pid_file "$f"; done
    stop_pid_file "$STATE/slurmctld.pid"
    if [ -f "$STATE/munge.started" ]; then
        stop_pid_file /run/munge/munged.pid
        rm -f "$STATE/munge.started"
    fi
    [ -d "$STATE" ] && remove_hosts
    log "stopped (state and logs kept in $STATE)"
}

cmd_status() {
    local f rc=0
    if alive "$STATE/slurmctld.pid"; then echo "slurmctld: running (pid $(cat "$STATE/slurmctld.pid"))"; else echo "slurmctld: stopped"; rc=1; fi
    for f in "$STATE"/slurmd-*.run.pid; do
        [ -e "$f" ] || continue
        if alive "$f"; then echo "$(basename "$f" .run.pid): running (pid $(cat "$f"))"; else echo "$(basename "$f" .run.pid): stopped"; rc=1; fi
    done
    if [ $rc -eq 0 ]; then
        SLURM_CONF=$CONF sinfo
        SLURM_CONF=$CONF squeue
    fi
    return $rc
}

cmd_env() { echo "export SLURM_CONF=$CONF"; }

case "${1:-}" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    env) cmd_env ;;
    *) echo "usage: $0 start|stop|status|env  (see scripts/slurm/README.md)" >&2; exit 2 ;;
esac
