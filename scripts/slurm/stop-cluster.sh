#!/usr/bin/env bash
# Stop the single-node SLURM cluster of start-cluster.sh: cancel its jobs, then stop
# slurmd, slurmctld, slurmdbd, MariaDB and munged (each only if start-cluster.sh started
# it), remove the fake GPU devices, and check that nothing is left running.
# Harmless when nothing runs. Keeps /etc/slurm and the runtime dir (state, logs,
# database) so the next start is fast; SAM2_SLURM_PURGE=1 also deletes the runtime dir.
set -euo pipefail

RUN_DIR=${SAM2_SLURM_DIR:-/var/tmp/sam2-3dmed-slurm}
PURGE=${SAM2_SLURM_PURGE:-0}
PIDS=$RUN_DIR/run
say() { echo "stop-cluster: $*"; }
[ "$(id -u)" -eq 0 ] || { echo "stop-cluster: ERROR: run as root" >&2; exit 1; }

running() {  # running PID: a live process (an exited one not yet reaped does not count)
  local state
  state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
  [[ $state != Z* ]]
}

pid_of() {  # pid_of PIDFILE COMM: the live pid named in PIDFILE, if its command is COMM
  local pid
  [ -s "$1" ] || return 1
  pid=$(head -n 1 "$1" | tr -dc '0-9')
  [ -n "$pid" ] && running "$pid" && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$2" ] && echo "$pid"
}

stop_pid() {  # stop_pid PID NAME: TERM, wait up to 15 s, then KILL
  local pid=$1 name=$2 i
  kill -TERM "$pid" 2>/dev/null || return 0
  for ((i = 0; i < 60; i++)); do
    running "$pid" || { say "stopped $name ($pid)"; return 0; }
    sleep 0.25
  done
  kill -KILL "$pid" 2>/dev/null || true
  say "killed $name ($pid) after 15 s"
}

# 1. cancel every job of the cluster so no job step outlives slurmd
if pid_of "$PIDS/slurmctld.pid" slurmctld >/dev/null && command -v squeue >/dev/null; then
  jobs=$(squeue -h -o %A 2>/dev/null | tr '\n' ' ' || true)
  if [ -n "${jobs// /}" ]; then
    say "cancelling jobs: $jobs"
    read -r -a job_ids <<<"$jobs"
    scancel "${job_ids[@]}" || true
    for ((i = 0; i < 60; i++)); do
      [ -z "$(squeue -h -t running,completing -o %A 2>/dev/null)" ] && break
      sleep 0.5
    done
  fi
fi

# 2. the daemons, in dependency order (munged: only if start-cluster.sh started it)
for spec in slurmd:"$PIDS/slurmd.pid" slurmctld:"$PIDS/slurmctld.pid" slurmdbd:"$PIDS/slurmdbd.pid" \
  mariadbd:"$RUN_DIR/mysql-run/mariadbd.pid" munged:/run/munge/munged.pid; do
  name=${spec%%:*}
  file=${spec#*:}
  if [ -e "$PIDS/$name.ours" ] && pid=$(pid_of "$file" "$name"); then
    stop_pid "$pid" "$name"
  fi
  rm -f "$PIDS/$name.ours"
done

# 3. job steps of this cluster that survived (a job killed while slurmd was down)
for pid in $(pgrep -x slurmstepd || true); do
  running "$pid" || continue
  say "stopping leftover slurmstepd $pid"
  stop_pid "$pid" slurmstepd
done

rm -f /dev/fakegpu[0-9]*
if [ "$PURGE" = 1 ]; then
  rm -rf "$RUN_DIR"
  say "removed $RUN_DIR"
fi

left=""
for name in slurmd slurmctld slurmscriptd slurmdbd slurmstepd mariadbd munged; do
  for pid in $(pgrep -x "$name" || true); do
    if running "$pid"; then left+="$pid $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null)"$'\n'; fi
  done
done
if [ -n "$left" ]; then
  say "still running (not started by start-cluster.sh, left alone):"
  printf '%s' "$left"
else
  say "nothing left running"
fi
