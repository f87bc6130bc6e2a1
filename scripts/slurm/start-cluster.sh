#!/usr/bin/env bash
# Start a single-node SLURM cluster on 127.0.0.1 (for CI and laptops), idempotently.
#
#   sudo scripts/slurm/start-cluster.sh     # then: snakemake --cores 8 --profile slurm ...
#   sudo scripts/slurm/stop-cluster.sh
#
# Debian/Ubuntu only, run as root, no systemd needed. What it does, each step skipped
# when already done:
#   * installs slurmctld slurmd slurm-client munge slurmdbd mariadb-server/-client (apt);
#   * creates the munge key and /run/munge, starts munged as the munge user;
#   * starts a private MariaDB (data under the runtime dir, 127.0.0.1:$SAM2_SLURM_DB_PORT,
#     so it never touches a system MariaDB) and slurmdbd on it, so that `sacct` works
#     as on a real cluster (the Snakemake SLURM executor polls job states with sacct);
#   * writes /etc/slurm/{slurm,slurmdbd,gres}.conf (the path is fixed: the Snakemake
#     jobstep plugin strips SLURM_CONF before its inner srun) and refuses to overwrite
#     files it did not write itself;
#   * advertises $SAM2_SLURM_GPUS fake GPUs (character devices /dev/fakegpuN, c 1 3)
#     so rules asking for `gpu=1` schedule; and more CPUs/memory than the machine has
#     (SlurmdParameters=config_overrides) so rules asking for 32 GB still schedule.
#     Jobs are NOT confined to what they ask for (task/none, no cgroups).
#   * starts slurmctld and slurmd, waits until the node is idle and sacct answers.
# Running it again while everything is up only prints the summary line.
# Uses ports 6817-6819 (SLURM) and $SAM2_SLURM_DB_PORT. On a machine with systemd,
# installing the packages may also start the distribution's own munge/MariaDB services:
# a running munged is reused, a system MariaDB is left alone (ours is separate).
#
# Settings (environment): SAM2_SLURM_DIR (runtime dir: state, spool, logs, database;
# default /var/tmp/sam2-3dmed-slurm), SAM2_SLURM_CPUS (8), SAM2_SLURM_MEM_MB (64000),
# SAM2_SLURM_GPUS (2), SAM2_SLURM_DB_PORT (3307), SAM2_SLURM_WAIT_S (60),
# SAM2_SLURM_FORCE=1 (overwrite /etc/slurm files that this script did not write).
set -euo pipefail

RUN_DIR=${SAM2_SLURM_DIR:-/var/tmp/sam2-3dmed-slurm}
CPUS=${SAM2_SLURM_CPUS:-8}
MEM_MB=${SAM2_SLURM_MEM_MB:-64000}
GPUS=${SAM2_SLURM_GPUS:-2}
DB_PORT=${SAM2_SLURM_DB_PORT:-3307}
WAIT_S=${SAM2_SLURM_WAIT_S:-60}
FORCE=${SAM2_SLURM_FORCE:-0}
CLUSTER=sam2ci
PARTITION=main
ETC=/etc/slurm
MARK="# Written by sam2-3dmed scripts/slurm/start-cluster.sh (single-node test cluster)."
PKGS=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server mariadb-client)

say() { echo "start-cluster: $*"; }
die() { echo "start-cluster: ERROR: $*" >&2; exit 1; }
show_logs() {  # the tail of each given log file, on stderr
  local f
  for f in "$@"; do
    if [ -s "$f" ]; then
      echo "----- last lines of $f" >&2
      tail -n 25 "$f" >&2
    fi
  done
}
fail() {  # fail MESSAGE LOG...
  local msg=$1
  shift
  show_logs "$@"
  die "$msg"
}

for v in CPUS MEM_MB GPUS DB_PORT WAIT_S; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "SAM2_SLURM_$v must be a number, got '${!v}'"
done
((GPUS >= 1)) || die "SAM2_SLURM_GPUS must be at least 1"
[[ $RUN_DIR == /* && $RUN_DIR != *[[:space:]]* ]] || die "SAM2_SLURM_DIR must be an absolute path without spaces"
[ "$(id -u)" -eq 0 ] || die "run as root (it installs packages and starts system daemons)"
command -v apt-get >/dev/null || die "needs a Debian-like system (apt-get)"

HOST=$(hostname -s)
LOG=$RUN_DIR/log
PIDS=$RUN_DIR/run            # pid files of the daemons; *.ours marks what this script started
DB_DIR=$RUN_DIR/mysql        # MariaDB data (owned by mysql)
DB_RUN=$RUN_DIR/mysql-run    # MariaDB socket and pid file (owned by mysql)
DB_SOCK=$DB_RUN/mysqld.sock
DB_PID=$DB_RUN/mariadbd.pid
mkdir -p "$RUN_DIR" "$LOG" "$PIDS" "$RUN_DIR/state" "$RUN_DIR/spool"
chmod 0755 "$RUN_DIR"

# running PID: a live process (an exited one not yet reaped does not count)
running() {
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $state != Z* ]]
}

# alive PIDFILE COMM: the pid file names a live process with that command name
alive() {
  local pid
  [ -s "$1" ] || return 1
  pid=$(head -n 1 "$1" | tr -dc '0-9')
  [ -n "$pid" ] && running "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ]
}

# wait_for SECONDS COMMAND...: poll COMMAND every 0.5 s, at most SECONDS
wait_for() {
  local deadline=$(($(date +%s) + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    if (($(date +%s) >= deadline)); then
      return 1
    fi
    sleep 0.5
  done
}

# ---------------------------------------------------------------- packages
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing ${missing[*]} (apt) ..."
  t0=$(date +%s)
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$LOG/apt.log" 2>&1; then
    { apt-get update -q && apt-get install -y -q --no-install-recommends "${missing[@]}"; } >>"$LOG/apt.log" 2>&1 \
      || fail "apt-get install ${missing[*]} failed" "$LOG/apt.log"
  fi
  say "installed in $(($(date +%s) - t0)) s"
fi
t_cluster=$(date +%s)

# ---------------------------------------------------------------- munge
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
munge_ok() { { munge -n </dev/null | unmunge; } >/dev/null 2>&1; }
if ! munge_ok; then
  runuser -u munge -- /usr/sbin/munged >"$LOG/munged.out" 2>&1 \
    || fail "munged did not start" "$LOG/munged.out" /var/log/munge/munged.log
  touch "$PIDS/munged.ours"
  wait_for 10 munge_ok || fail "munge does not answer" /var/log/munge/munged.log
fi

# ---------------------------------------------------------------- config files
# write_conf FILE MODE: stdin -> FILE if the content changed; refuses foreign files.
changed=0
write_conf() {
  local f=$1 mode=$2 tmp
  tmp=$(mktemp)
  cat >"$tmp"
  if [ -e "$f" ] && ! grep -qxF "$MARK" "$f" && [ "$FORCE" != 1 ]; then
    rm -f "$tmp"
    die "$f exists and was not written by this script; not overwriting it (SAM2_SLURM_FORCE=1 to do so)"
  fi
  if [ -e "$f" ] && cmp -s "$tmp" "$f"; then
    rm -f "$tmp"
  else
    install -m "$mode" "$tmp" "$f"
    rm -f "$tmp"
    changed=1
  fi
}

mkdir -p "$ETC"
# the database password: random, kept in the runtime dir (a throw-away local database)
if [ ! -s "$RUN_DIR/db.pass" ]; then
  (umask 077 && head -c 32 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 24 >"$RUN_DIR/db.pass")
fi
DB_PASS=$(cat "$RUN_DIR/db.pass")

if ((GPUS == 1)); then gpu_files=/dev/fakegpu0; else gpu_files="/dev/fakegpu[0-$((GPUS - 1))]"; fi

write_conf "$ETC/slurm.conf" 0644 <<EOF
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$HOST(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
KillWait=5
MpiDefault=none
StateSaveLocation=$RUN_DIR/state
SlurmdSpoolDir=$RUN_DIR/spool
SlurmctldPidFile=$PIDS/slurmctld.pid
SlurmdPidFile=$PIDS/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
GresTypes=gpu
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=6819
AccountingStorageTRES=gres/gpu
AccountingStoreFlags=job_comment
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=30
JobCompType=jobcomp/none
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$GPUS State=UNKNOWN
PartitionName=$PARTITION Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

write_conf "$ETC/gres.conf" 0644 <<EOF
$MARK
NodeName=$HOST Name=gpu File=$gpu_files
EOF

write_conf "$ETC/slurmdbd.conf" 0600 <<EOF
$MARK
AuthType=auth/munge
DbdAddr=127.0.0.1
DbdHost=$HOST
DbdPort=6819
SlurmUser=root
PidFile=$PIDS/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=slurm
StoragePass=$DB_PASS
StorageLoc=slurm_acct_db
EOF

# fake GPUs: character devices (same numbers as /dev/null); SLURM only needs the files
for ((i = 0; i < GPUS; i++)); do
  [ -c "/dev/fakegpu$i" ] || mknod -m 0666 "/dev/fakegpu$i" c 1 3
done

# stop PIDFILE COMM: TERM a daemon started before (used when the config changed)
stop_daemon() {
  local pid i
  alive "$1" "$2" || return 0
  pid=$(head -n 1 "$1" | tr -dc '0-9')
  kill -TERM "$pid"
  for ((i = 0; i < 40; i++)); do running "$pid" || return 0; sleep 0.25; done
  kill -KILL "$pid" 2>/dev/null || true
}
if ((changed)); then
  # a running daemon would keep the old settings
  stop_daemon "$PIDS/slurmd.pid" slurmd
  stop_daemon "$PIDS/slurmctld.pid" slurmctld
  stop_daemon "$PIDS/slurmdbd.pid" slurmdbd
fi

# ---------------------------------------------------------------- MariaDB
if ! alive "$DB_PID" mariadbd; then
  install -d -o mysql -g mysql -m 0750 "$DB_DIR"
  install -d -o mysql -g mysql -m 0755 "$DB_RUN"
  if [ ! -d "$DB_DIR/mysql" ]; then
    mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" --skip-test-db \
      --auth-root-authentication-method=socket >"$LOG/mariadb-install.log" 2>&1 \
      || fail "mariadb-install-db failed" "$LOG/mariadb-install.log"
  fi
  setsid mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" --socket="$DB_SOCK" \
    --pid-file="$DB_PID" --port="$DB_PORT" --bind-address=127.0.0.1 --skip-name-resolve \
    --log-error="$LOG/mariadb.log" --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
  touch "$PIDS/mariadbd.ours"
fi
wait_for 30 mariadb-admin --no-defaults --socket="$DB_SOCK" -u root ping \
  || fail "MariaDB does not answer on $DB_SOCK" "$LOG/mariadb.log"
mariadb --no-defaults --socket="$DB_SOCK" -u root <<EOF || fail "could not create the slurm database user" "$LOG/mariadb.log"
CREATE USER IF NOT EXISTS 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
ALTER USER 'slurm'@'127.0.0.1' IDENTIFIED BY '$DB_PASS';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';
EOF

# ---------------------------------------------------------------- slurmdbd
if ! alive "$PIDS/slurmdbd.pid" slurmdbd; then
  slurmdbd >"$LOG/slurmdbd.out" 2>&1 || fail "slurmdbd did not start" "$LOG/slurmdbd.out" "$LOG/slurmdbd.log"
  touch "$PIDS/slurmdbd.ours"
fi
wait_for 30 sacctmgr -n -P list cluster format=cluster \
  || fail "slurmdbd does not answer (sacctmgr list cluster)" "$LOG/slurmdbd.log" "$LOG/mariadb.log"
if ! sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER"; then
  sacctmgr -i add cluster "$CLUSTER" >"$LOG/sacctmgr.out" 2>&1 \
    || fail "sacctmgr add cluster failed" "$LOG/sacctmgr.out" "$LOG/slurmdbd.log"
fi

# ---------------------------------------------------------------- slurmctld, slurmd
if ! alive "$PIDS/slurmctld.pid" slurmctld; then
  slurmctld >"$LOG/slurmctld.out" 2>&1 || fail "slurmctld did not start" "$LOG/slurmctld.out" "$LOG/slurmctld.log"
  touch "$PIDS/slurmctld.ours"
fi
wait_for 20 sinfo -h -o %P || fail "slurmctld does not answer (sinfo)" "$LOG/slurmctld.log"
if ! alive "$PIDS/slurmd.pid" slurmd; then
  slurmd >"$LOG/slurmd.out" 2>&1 || fail "slurmd did not start" "$LOG/slurmd.out" "$LOG/slurmd.log"
  touch "$PIDS/slurmd.ours"
fi

node_up() { sinfo -h -n "$HOST" -o %t | grep -Eqx 'idle|mix|alloc|comp'; }
sacct_ok() { sacct -n -X --starttime now-1hours -o JobID; }
remaining=$((WAIT_S - ($(date +%s) - t_cluster)))
((remaining > 5)) || remaining=5
wait_for "$remaining" node_up \
  || fail "node $HOST not idle within ${WAIT_S} s: $(sinfo -h -N -o '%N %t %E' 2>&1 | head -n 3)" \
    "$LOG/slurmctld.log" "$LOG/slurmd.log"
wait_for 10 sacct_ok || fail "sacct does not answer" "$LOG/slurmdbd.log" "$LOG/slurmctld.log"

say "up ($(($(date +%s) - t_cluster)) s): cluster $CLUSTER, node $HOST $(sinfo -h -n "$HOST" -o %t)" \
  "(CPUs=$CPUS RealMemory=$MEM_MB Gres=gpu:$GPUS), partition $PARTITION, accounting slurmdbd+MariaDB" \
  "127.0.0.1:$DB_PORT, runtime dir $RUN_DIR"
