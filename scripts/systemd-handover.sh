#!/usr/bin/env bash
# The handover under real systemd (issue 11): systemd 252 from a debootstrap Debian tree runs as
# pid 1 of its own pid + mount namespace (systemd-nspawn does not start on this host), the
# shipped unit (systemd/storefs.service, with a drop-in pointing it at the fixture cache) mounts
# /nix/store, four readers, each in a mount namespace of its own with a bind mount of the store,
# hash the fixture closure again and again, and the daemon is killed (`systemctl kill -s KILL`,
# Restart=on-failure brings it back) and restarted (`systemctl restart`) under them. Prints the
# readers' figures and fails unless every read was right, no reader stuck, the fd store held
# both descriptors and the mount stayed the same.
#   scripts/systemd-handover.sh [WORKDIR]   # as root; WORKDIR defaults to /var/tmp/storefs-systemd
# Optional (about a minute, plus the first debootstrap): not part of scripts/test.sh. Needs the
# fixtures (tests/fixtures/build.sh, run by the test suite) and a debug build.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
work=${1:-/var/tmp/storefs-systemd}
tree=$work/tree
fixtures=${STOREFS_FIXTURES_DIR:-/var/tmp/storefs-fixtures}
kills=${KILLS:-5}
restarts=${RESTARTS:-5}
readers=4

say() { printf 'systemd-handover: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }
[[ $(id -u) -eq 0 ]] || die "must run as root"
[[ -f $fixtures/closure.txt ]] || die "no fixtures in $fixtures (run tests/fixtures/build.sh)"
command -v debootstrap >/dev/null || {
    say "installing debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
}

mkdir -p "$work"
if [[ ! -x $tree/lib/systemd/systemd ]]; then
    say "debootstrap bookworm with systemd into $tree"
    rm -rf "$tree"
    debootstrap --variant=minbase --include=systemd,systemd-sysv,dbus bookworm "$tree" \
        http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 ||
        die "debootstrap failed; see $work/debootstrap.log"
fi

say "building storefs"
cargo build --quiet --locked
install -m 0755 target/debug/storefs "$tree/usr/local/bin/storefs"
install -m 0644 systemd/storefs.service "$tree/etc/systemd/system/storefs.service"
key=$(cat "$fixtures/keys/public")
mkdir -p "$tree/etc/systemd/system/storefs.service.d" "$tree/fixtures" "$tree/nix/store"
cat >"$tree/etc/systemd/system/storefs.service.d/fixture.conf" <<EOF
[Unit]
# Many starts in a short time are this test's point.
StartLimitIntervalSec=0
[Service]
ExecStart=
ExecStart=/usr/local/bin/storefs mount --allow-other --nix-conf /dev/null --substituter file:///fixtures/zstd --trusted-public-key $key
EOF
# Nothing else to start: a quiet, quick boot.
ln -sf /dev/null "$tree/etc/systemd/system/systemd-logind.service"
ln -sf /dev/null "$tree/etc/systemd/system/getty.target"

run=$work/run
rm -rf "$run" && mkdir -p "$run"
unshare_pid=
pid1=
cleanup() {
    if [[ -n $pid1 ]]; then kill -KILL "$pid1" 2>/dev/null || true; fi
    if [[ -n $unshare_pid ]]; then wait "$unshare_pid" 2>/dev/null || true; fi
}
trap cleanup EXIT

say "starting systemd as pid 1 of a new pid + mount namespace"
unshare --pid --fork --mount --propagation private bash -c '
    tree=$1 fixtures=$2
    mount --bind "$tree" "$tree"
    mount --bind "$fixtures/caches" "$tree/fixtures"
    mount -t proc proc "$tree/proc"
    mount -t sysfs sysfs "$tree/sys"
    mount --rbind /dev "$tree/dev"
    mount -t tmpfs tmpfs "$tree/run"
    exec chroot "$tree" /lib/systemd/systemd --system --log-target=kmsg
' bash "$tree" "$fixtures" >"$work/systemd.log" 2>&1 &
unshare_pid=$!
for _ in $(seq 100); do
    pid1=$(cat "/proc/$unshare_pid/task/$unshare_pid/children" 2>/dev/null | awk '{print $1}')
    [[ -n $pid1 ]] && break
    sleep 0.1
done
[[ -n $pid1 ]] || die "systemd did not start; see $work/systemd.log"
ctl() { nsenter -t "$pid1" -m -p -r -w systemctl "$@"; }
inside() { nsenter -t "$pid1" -m -- "$@"; }
for _ in $(seq 300); do ctl list-units >/dev/null 2>&1 && break; sleep 0.1; done
ctl --version | head -1

ctl daemon-reload
ctl start storefs
ctl is-active storefs >/dev/null || { ctl status storefs --no-pager || true; die "storefs did not start"; }
stored=$(ctl show storefs -p NFileDescriptorStore --value)
say "storefs active; fd store holds $stored descriptors"
[[ $stored == 2 ]] || die "expected 2 stored descriptors (fuse, state), got $stored"
store=$tree/nix/store
mount_id() { inside awk -v m="$store" '$5 == m { print $1 }' /proc/self/mountinfo | tail -1; }
id=$(mount_id)
[[ -n $id ]] || die "no mount at $store"

say "expected contents from the host's /nix/store"
python3 - "$fixtures/closure.txt" "$run/expected.txt" <<'EOF'
import hashlib, os, sys
closure, out = sys.argv[1:3]
with open(out, "w") as o:
    def walk(path, rel):
        if os.path.islink(path):
            o.write(f"L\t{os.readlink(path)}\t{rel}\n")
        elif os.path.isdir(path):
            for name in sorted(os.listdir(path)):
                walk(os.path.join(path, name), f"{rel}/{name}")
        else:
            with open(path, "rb") as f:
                o.write(f"F\t{hashlib.sha256(f.read()).hexdigest()}\t{rel}\n")
    for sp in open(closure).read().split():
        walk(sp, os.path.basename(sp))
EOF

say "$readers readers, each in its own mount namespace with a bind mount of the store"
reader_pids=()
for i in $(seq 0 $((readers - 1))); do
    inside unshare --mount --propagation private python3 "$repo/tests/handover_reader.py" \
        "$store" "$run/bind$i" "$run/expected.txt" "$run/reader$i.json" "$run/stop" \
        2>"$run/reader$i.err" &
    reader_pids+=($!)
done
reads() {
    python3 -c 'import glob, json, sys
print(sum(json.load(open(p)).get("reads", 0) for p in glob.glob(sys.argv[1] + "/reader*.json")))' "$run"
}
wait_reads() {
    local before
    before=$(reads)
    for _ in $(seq 600); do
        (($(reads) >= before + 100)) && return 0
        sleep 0.1
    done
    die "readers made no progress"
}

started=$(date +%s.%N)
killed=0 restarted=0
while ((killed < kills || restarted < restarts)); do
    wait_reads
    pid=$(ctl show storefs -p MainPID --value)
    if ((killed < kills && (killed <= restarted || restarted == restarts))); then
        say "systemctl kill -s KILL storefs (pid $pid)"
        ctl kill -s KILL storefs
        for _ in $(seq 200); do
            new=$(ctl show storefs -p MainPID --value)
            [[ $new != 0 && $new != "$pid" ]] && ctl is-active storefs >/dev/null && break
            sleep 0.05
        done
        killed=$((killed + 1))
    else
        say "systemctl restart storefs (pid $pid)"
        ctl restart storefs
        restarted=$((restarted + 1))
    fi
    ctl is-active storefs >/dev/null || die "storefs is not active"
    [[ $(mount_id) == "$id" ]] || die "the mount changed (was $id, now $(mount_id))"
    [[ $(ctl show storefs -p NFileDescriptorStore --value) == 2 ]] || die "fd store lost"
done
wait_reads
pid=$(ctl show storefs -p MainPID --value)
say "storefs upgrade under systemd (pid $pid): $(nsenter -t "$pid1" -m -p -r -w /usr/local/bin/storefs upgrade)"
[[ $(ctl show storefs -p MainPID --value) == "$pid" ]] || die "the upgrade changed the main pid"
ctl is-active storefs >/dev/null || die "storefs is not active after the upgrade"
[[ $(mount_id) == "$id" ]] || die "the mount changed at the upgrade"
wait_reads
touch "$run/stop"
for i in "${!reader_pids[@]}"; do
    timeout 120 tail --pid="${reader_pids[$i]}" -f /dev/null || die "reader $i is stuck"
done
elapsed=$(python3 -c "import time; print(f'{time.time() - $started:.1f}')")
python3 - "$run" "$readers" "$kills" "$restarts" "$elapsed" "$id" <<'EOF'
import json, sys
run, n, kills, restarts, elapsed, mid = sys.argv[1:7]
total, fails, stall = 0, 0, 0.0
for i in range(int(n)):
    f = json.load(open(f"{run}/reader{i}.json"))
    total += f["reads"]; fails += f["failure_count"]; stall = max(stall, f["max_stall"])
    print(f"reader {i}: {f['reads']} reads, {f['rounds']} rounds, {f['failure_count']} failed, "
          f"longest stall {f['max_stall']:.3f} s {f['failures'][:3]}")
print(f"systemd-handover: {kills} kills, {restarts} restarts in {elapsed} s: {total} reads, "
      f"{fails} failed, longest stall {stall:.3f} s, mount id {mid} throughout")
sys.exit(1 if fails else 0)
EOF
ctl stop storefs
after=$(inside stat -f "$store" 2>&1 | tail -1 || true)
say "after systemctl stop: $after"
[[ $after == *"not connected"* ]] || die "a stopped mount should answer ENOTCONN"
ctl start storefs
new_id=$(mount_id)
inside stat -f "$store" >/dev/null || die "no live mount after a start"
say "systemctl start: a fresh mount (id $new_id), the dead one detached; NFileDescriptorStore=$(ctl show storefs -p NFileDescriptorStore --value)"
