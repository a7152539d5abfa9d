#!/usr/bin/env bash
# A real single-node SLURM on this machine, for the launcher tests (run as root; idempotent, quick when up):
#   - Debian's munge + slurmctld + slurmd (22.05), one partition `debug` holding this machine's CPUs and memory;
#   - no systemd, no cgroups, no accounting database: proctrack/linuxproc, task/none, select/cons_tres,
#     so it also works inside a container;
#   - config, state and logs under $SPEEDRUN_SLURM_DIR (default: speedrun-slurm in $TMPDIR or the system temp dir); /etc/slurm is left alone.
# It prints the lines to export so the SLURM tests run instead of skipping:
#   eval "$(bash scripts/slurm_service.sh)"    # sets SLURM_CONF and SPEEDRUN_TEST_SLURM=1
# Everything else goes to stderr; on failure it exits non-zero with one line that says why.
# Stop it with: kill $(cat $SPEEDRUN_SLURM_DIR/run/slurmd.pid $SPEEDRUN_SLURM_DIR/run/slurmctld.pid)
set -euo pipefail

DIR=${SPEEDRUN_SLURM_DIR:-${TMPDIR:-/tmp}/speedrun-slurm}
CONF=$DIR/etc/slurm.conf
export SLURM_CONF=$CONF
log() { echo "slurm_service: $*" >&2; }
die() { echo "slurm_service: $*" >&2; exit 1; }

need=()
command -v munged >/dev/null 2>&1 || need+=(munge)
command -v slurmctld >/dev/null 2>&1 || need+=(slurmctld)
command -v slurmd >/dev/null 2>&1 || need+=(slurmd)
command -v sbatch >/dev/null 2>&1 || need+=(slurm-client)
if [ ${#need[@]} -gt 0 ]; then
  [ "$(id -u)" = 0 ] || die "need root to apt-get install ${need[*]}"
  log "installing ${need[*]}"
  apt-get update -qq >&2 || die "apt-get update failed"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 \
    || die "apt-get install ${need[*]} failed"
fi
[ "$(id -u)" = 0 ] || die "slurmd must run as root to start jobs; run this script as root"

# munge: one key, made once; the daemon runs as the munge user.
if [ ! -s /etc/munge/munge.key ]; then
  log "creating the munge key"
  mkdir -p /etc/munge
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
  chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  mkdir -p /run/munge /var/log/munge /var/lib/munge
  chown munge:munge /run/munge /var/log/munge /var/lib/munge
  runuser -u munge -- /usr/sbin/munged >&2 || die "munged did not start (see /var/log/munge/munged.log)"
  for _ in $(seq 1 20); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.25; done
  munge -n | unmunge >/dev/null 2>&1 || die "munge does not round-trip a credential (see /var/log/munge/munged.log)"
fi

# The config: this node as `slurmd -C` sees it, reachable on 127.0.0.1.
mkdir -p "$DIR"/{etc,state,spool,log,run}
node_line=$(slurmd -C | head -1)  # NodeName=vm CPUs=2 ... RealMemory=24105
node=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node_line")
[ -n "$node" ] || die "slurmd -C gave no NodeName ($node_line)"
new_conf=$(cat <<EOF
# Written by scripts/slurm_service.sh: a single-node cluster for tests.
ClusterName=speedrun
SlurmctldHost=$node(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
# A requeued job may start again after the credential lifetime (default 120 s): 10 s keeps the tests short.
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
JobRequeue=1
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MailProg=/bin/true
InactiveLimit=0
KillWait=10
MinJobAge=600
SlurmctldTimeout=30
SlurmdTimeout=30
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd.log
$node_line NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
)

alive() {  # the daemon in pid file $1 runs (a zombie, e.g. one that failed after forking, does not count)
  local state
  state=$([ -s "$1" ] && ps -o stat= -p "$(cat "$1")" 2>/dev/null) || return 1
  [ -n "$state" ] && [ "${state:0:1}" != Z ]
}
if [ -f "$CONF" ] && [ "$(cat "$CONF")" != "$new_conf" ]; then
  log "config changed: restarting slurmctld and slurmd"
  for pid_file in "$DIR/run/slurmd.pid" "$DIR/run/slurmctld.pid"; do
    if alive "$pid_file"; then kill "$(cat "$pid_file")"; fi
  done
  for _ in $(seq 1 40); do alive "$DIR/run/slurmd.pid" || alive "$DIR/run/slurmctld.pid" || break; sleep 0.25; done
fi
[ -f "$CONF" ] && [ "$(cat "$CONF")" = "$new_conf" ] || printf '%s\n' "$new_conf" >"$CONF"

if ! alive "$DIR/run/slurmctld.pid"; then
  log "starting slurmctld (logs in $DIR/log)"
  slurmctld -f "$CONF" >&2 || die "slurmctld did not start: $(tail -1 "$DIR/log/slurmctld.log" 2>/dev/null)"
fi
if ! alive "$DIR/run/slurmd.pid"; then
  log "starting slurmd for node $node"
  slurmd -f "$CONF" >&2 || die "slurmd did not start: $(tail -1 "$DIR/log/slurmd.log" 2>/dev/null)"
fi

# Ready when the node takes jobs; a node left down/drained by an earlier run is resumed.
state=""
for _ in $(seq 1 60); do
  state=$(sinfo -h -n "$node" -o %T 2>/dev/null || true)
  case "$state" in
    idle*|mixed*|allocated*|completing*) break ;;
    down*|drain*) scontrol update NodeName="$node" State=RESUME >&2 2>/dev/null || true ;;
  esac
  sleep 0.5
done
case "$state" in
  idle*|mixed*|allocated*|completing*) ;;
  *) die "node $node is '${state:-unknown}' after 30 s (see $DIR/log/slurmctld.log and slurmd.log)" ;;
esac
# Both daemons forked before binding their ports: one that died since (e.g. another SLURM holds 6817/6818)
# leaves sinfo answering from someone else's controller.
for daemon in slurmctld slurmd; do
  alive "$DIR/run/$daemon.pid" || die "$daemon exited after starting: $(tail -1 "$DIR/log/$daemon.log" 2>/dev/null)"
done
log "up: node $node $state, partition debug"
echo "export SLURM_CONF=$CONF"
echo "export SPEEDRUN_TEST_SLURM=1"
