#!/usr/bin/env bash
# A real Slurm run of the smoke suite (make test-cluster): installs Debian's slurm-wlm + munge if
# missing (needs root), starts munged, slurmctld and slurmd for this host only (config and state
# under a temp dir; nothing in /etc/slurm is touched), runs the suite with --profile profiles/slurm
# through snakemake-executor-plugin-slurm, runs it locally too, and compares results.csv values.
#
# Usage: tests/cluster/run_slurm.sh [WORKDIR]   (env: PY, SNAKEMAKE, KEEP=1 keeps the daemons)
# Exit status: 0 pass; 2 failure; 3 this machine cannot host the test cluster (not root and no
# Slurm, apt-get failed, or a real Slurm config is present) — .ci/run reports 3 as skipped.
set -euo pipefail
cd "$(dirname "$0")/../.."
REPO=$PWD
PY=${PY:-$REPO/.venv/bin/python}
SNAKEMAKE=${SNAKEMAKE:-$(dirname "$PY")/snakemake}
WORK=${1:-$(mktemp -d /tmp/fewstep-slurm.XXXXXX)}
mkdir -p "$WORK"/{state,spool,log}
say() { printf '[test-cluster %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 2; }
cannot() { printf 'test-cluster cannot run here: %s\n' "$*" >&2; exit 3; }
T0=$(date +%s)

# 1. packages ---------------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  [ "$(id -u)" = 0 ] || cannot "slurm-wlm/munge are missing and this is not root — run as root or apt-get install slurm-wlm munge"
  say "installing slurm-wlm munge (apt-get)"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null; } \
    || cannot "apt-get install slurm-wlm munge failed (no Debian mirror?)"
fi
"$PY" -c "import snakemake_executor_plugin_slurm" 2>/dev/null || {
  say "installing snakemake-executor-plugin-slurm (pip)"
  "$PY" -m pip install -q "snakemake-executor-plugin-slurm>=1"
}

# 2. munge (authentication between the Slurm daemons and commands) -----------------------------
if ! pgrep -x munged >/dev/null; then
  mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge
  [ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
  chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge 2>/dev/null || true
  chmod 0700 /etc/munge && chmod 0400 /etc/munge/munge.key
  if id munge >/dev/null 2>&1; then runuser -u munge -- munged; else munged --force; fi
  say "munged started"
fi

# 3. a one-node cluster: partition 'gpu' (the profile's default partition; no GRES needed) -------
HOST=$(hostname -s)
CPUS=$(nproc)
MEM=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
export SLURM_CONF=$WORK/slurm.conf
cat > "$SLURM_CONF" <<EOF
# fewstep-bench test-cluster (tests/cluster/run_slurm.sh)
ClusterName=fewstep
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
ReturnToService=2
MinJobAge=600
MpiDefault=none
SchedulerType=sched/backfill
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM State=UNKNOWN
PartitionName=gpu Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
# The plugin's job step drops SLURM_CONF before its inner `srun`, so the config must also sit at
# the default path; never over a real cluster's config (ours carries a marker line).
ETC=/etc/slurm/slurm.conf
if [ -e "$ETC" ] && ! grep -q '^# fewstep-bench test-cluster' "$ETC"; then
  cannot "$ETC exists and is not this test's — run make test-cluster on a machine without a Slurm config"
fi
mkdir -p /etc/slurm && cp "$SLURM_CONF" "$ETC"
cleanup() {
  if [ "${KEEP:-0}" != 1 ]; then
    for p in slurmd slurmctld; do [ -s "$WORK/$p.pid" ] && kill "$(cat "$WORK/$p.pid")" 2>/dev/null || true; done
    grep -q '^# fewstep-bench test-cluster' "$ETC" 2>/dev/null && rm -f "$ETC"
  fi
  return 0
}
trap cleanup EXIT
slurmctld -f "$SLURM_CONF" -i
slurmd -f "$SLURM_CONF"
for _ in $(seq 60); do
  sinfo -h -N -o '%T' 2>/dev/null | grep -qE '^(idle|mixed|allocated)' && break
  sleep 1
done
sinfo -h -N -o '%N %T %c %m' | grep -qE 'idle|mixed' \
  || { tail -n 20 "$WORK/log/slurmd.log" "$WORK/log/slurmctld.log" >&2; die "slurmd did not come up (logs above)"; }
say "cluster up: $(sinfo -h -N -o '%N %T cpus=%c mem=%mMB partition=%P')"

# 4. the smoke suite through Slurm, then locally -----------------------------------------------
COMMON=(--config suite=smoke "results=$WORK/slurm/results" "reports=$WORK/slurm/reports" --rerun-incomplete)
# no accounting database here (AccountingStorageType=none): job states come from squeue, which
# MinJobAge=600 keeps showing finished jobs; --retries 0 fails fast instead of the profile's 3
say "snakemake --profile profiles/slurm (smoke suite)"
T1=$(date +%s)
"$SNAKEMAKE" --profile profiles/slurm "${COMMON[@]}" --jobs 4 --retries 0 \
  --slurm-no-account --slurm-status-command squeue --slurm-init-seconds-before-status-checks 2 \
  --slurm-logdir "$WORK/slurm-logs" \
  --default-resources slurm_partition=gpu mem_mb=1000 runtime=30 \
  > "$WORK/slurm.log" 2>&1 || { tail -n 40 "$WORK/slurm.log" >&2; die "the Slurm run failed (log: $WORK/slurm.log)"; }
T2=$(date +%s)
JOBS=$(grep -c "has been submitted with SLURM jobid" "$WORK/slurm.log" || true)
[ "$JOBS" -gt 0 ] || die "no job went through Slurm (is profiles/slurm's executor 'slurm'?) — see $WORK/slurm.log"
say "slurm run done in $((T2 - T1)) s ($JOBS Slurm jobs; slurmctld accepted $(grep -c _slurm_rpc_submit_batch_job "$WORK/log/slurmctld.log" || true))"
say "local run (same suite)"
"$SNAKEMAKE" --cores "$CPUS" --config suite=smoke "results=$WORK/local/results" "reports=$WORK/local/reports" \
  --rerun-incomplete --quiet rules > "$WORK/local.log" 2>&1 \
  || { tail -n 40 "$WORK/local.log" >&2; die "the local run failed (log: $WORK/local.log)"; }
T3=$(date +%s)
say "local run done in $((T3 - T2)) s"

# 5. same values ---------------------------------------------------------------------------------
PYTHONPATH=$REPO "$PY" tests/cluster/compare_results.py "$WORK/slurm/results/smoke/results.csv" \
  "$WORK/local/results/smoke/results.csv"
say "PASS: Slurm results.csv equals the local one (total $(( $(date +%s) - T0 )) s, work dir $WORK)"
