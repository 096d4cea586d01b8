#!/bin/bash
# usage: run.sh NAME extra-flags...   -> prints name wall cpu_s
name=$1; shift
cg=/sys/fs/cgroup/unified/exp-$name-$$
mkdir $cg
ob=/tmp/exp/fs/ob-$name-$$
root=/work/main/target/profile-build/build-fs
cd /work/main/target/profile-build/ws
start=$(date +%s.%N)
bash -c "echo \$\$ > $cg/cgroup.procs; exec env -i PATH=/usr/bin:/bin HOME=/tmp/exp bazel --output_user_root=/tmp/exp/fs/root --output_base=$ob build --spawn_strategy=linux-sandbox --symlink_prefix=/ $* //:all >/dev/null 2>/tmp/exp/$name.err"
end=$(date +%s.%N)
spid=$(cat $ob/server/server.pid.txt)
read -a st < /proc/$spid/stat
srv=$(( ${st[13]} + ${st[14]} ))
env -i PATH=/usr/bin:/bin HOME=/tmp/exp bazel --output_user_root=/tmp/exp/fs/root --output_base=$ob shutdown 2>/dev/null
for i in $(seq 50); do grep -q "populated 0" $cg/cgroup.events && break; sleep 0.2; done
u=$(awk '/usage_usec/{print $2}' $cg/cpu.stat)
echo "$name wall=$(echo "$end - $start" | bc) cpu=$(echo "scale=2; $u/1000000" | bc) server=$(echo "scale=2; $srv/100" | bc)"
rmdir $cg 2>/dev/null
rm -rf $ob
