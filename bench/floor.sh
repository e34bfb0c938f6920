#!/usr/bin/env bash
# bench/floor.sh BROKER WORKER1 WORKER2 BEAT [WORKER3 ...]
#
# The floor of bench/ (b): the kit's fresh installs done by a bare shell script, all hosts
# in parallel, no Ansible. The four arguments are running containers (systemd as PID 1) on
# one Docker network. Redis goes on BROKER; the venv with the kit's pins, the sample app,
# and a detached worker (WORKER1, WORKER2 and any further ones) or beat (BEAT) go on the others. The time from
# the start to the first task result is printed last: floor_seconds=<s>.
# Per-host apt/pip output goes to $FLOOR_LOG_DIR (default /tmp/floor-logs)/<container>.log.
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 BROKER WORKER1 WORKER2 BEAT [WORKER3 ...]" >&2; exit 2; }
start=$(date +%s.%N)
broker=$1 worker1=$2 worker2=$3 beat=$4
more_workers=("${@:5}")
app_src=$(cd "$(dirname "$0")/.." && pwd)/roles/celery_app/files/sample/proj
logs=${FLOOR_LOG_DIR:-/tmp/floor-logs}
mkdir -p "$logs"
password=$(od -An -N24 -tx1 /dev/urandom | tr -d ' \n')   # letters and digits
pins=("celery[redis]==5.6.0" kombu==5.7.0 redis==8.1.0 amqp==5.4.2 billiard==4.3.2 vine==5.1.0
  packaging==26.3 click==8.5.1 click-didyoumean==0.3.1 click-plugins==1.1.1.2 click-repl==0.4.1
  prompt_toolkit==3.0.53 python-dateutil==4.0.0 tzdata==2026.6 tzlocal==5.4.5)
elapsed() { awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}'; }

# on NAME: run stdin as a bash script in container NAME.
on() { docker exec -i "$1" bash -euxo pipefail -s; }

install_broker() {
  on "$broker" <<EOF
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server redis-tools
sed -i -E '/^(bind|requirepass|protected-mode) /d' /etc/redis/redis.conf
printf 'bind 0.0.0.0\nrequirepass %s\nprotected-mode yes\n' '$password' >>/etc/redis/redis.conf
systemctl restart redis-server
EOF
}

# install_celery NAME NODE: NODE is worker1, worker2 or beat.
install_celery() {
  local name=$1 node=$2 crt start_cmd
  for crt in /usr/local/share/ca-certificates/*.crt; do
    if [ -e "$crt" ]; then docker cp "$crt" "$name:/usr/local/share/ca-certificates/"; fi
  done
  docker exec "$name" mkdir -p /opt/celery/app
  docker cp "$app_src" "$name:/opt/celery/app/proj"
  if [ "$node" = beat ]; then
    start_cmd="beat --detach --schedule=/var/lib/celery/celerybeat-schedule"
  else
    start_cmd="worker --detach -n $node@%h -c 2"
  fi
  on "$name" <<EOF
update-ca-certificates
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3-venv logrotate
python3 -m venv /opt/celery/venv
/opt/celery/venv/bin/pip install --disable-pip-version-check ${pins[*]@Q}
getent group celery >/dev/null || groupadd --system celery
id celery >/dev/null 2>&1 || useradd --system --gid celery --home-dir /var/lib/celery --shell /usr/sbin/nologin celery
install -d -o celery -g celery -m 0750 /var/lib/celery /var/log/celery
cat >/opt/celery/app/proj/celeryconfig.py <<'CONFIG'
broker_url = "redis://:$password@$broker:6379/0"
result_backend = "redis://:$password@$broker:6379/1"
task_acks_late = True
worker_prefetch_multiplier = 1
broker_connection_retry_on_startup = True
kit_state_dir = "/var/lib/celery"
CONFIG
cd /opt/celery/app
runuser -u celery -- env CELERY_CONFIG_MODULE=proj.celeryconfig /opt/celery/venv/bin/celery -A proj $start_cmd \
  --logfile=/var/log/celery/$node.log --pidfile=/var/lib/celery/$node.pid
EOF
}

# job NAME COMMAND...: run COMMAND with its output in NAME's log, then say how long it took.
job() { "${@:2}" >"$logs/$1.log" 2>&1; echo "$1: installed at $(elapsed)s"; }
declare -A jobs=()
job "$broker" install_broker & jobs[$!]=$broker
job "$worker1" install_celery "$worker1" worker1 & jobs[$!]=$worker1
job "$worker2" install_celery "$worker2" worker2 & jobs[$!]=$worker2
job "$beat" install_celery "$beat" beat & jobs[$!]=$beat
n=2
for w in "${more_workers[@]}"; do
  n=$((n + 1))
  job "$w" install_celery "$w" "worker$n" & jobs[$!]=$w
done
failed=0
for pid in "${!jobs[@]}"; do
  wait "$pid" && continue
  failed=1; name=${jobs[$pid]}
  echo "$name: FAILED, last lines of $logs/$name.log:" >&2
  tail -n 30 "$logs/$name.log" >&2
done
[ "$failed" = 0 ] || exit 1

result=$(docker exec "$worker1" bash -c 'cd /opt/celery/app && runuser -u celery -- env CELERY_CONFIG_MODULE=proj.celeryconfig /opt/celery/venv/bin/python -c "from proj.tasks import add; print(add.delay(2, 3).get(timeout=120))"' \
  2>"$logs/client.log") || { echo "client: FAILED" >&2; tail -n 30 "$logs/client.log" >&2; exit 1; }
[ "$result" = 5 ] || { echo "client: expected 5, got '$result'" >&2; exit 1; }
echo "floor_seconds=$(elapsed)"
