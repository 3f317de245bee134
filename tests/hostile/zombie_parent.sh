#!/bin/sh
# Starts 50 children that exit a second later, and meanwhile becomes a program that never waits for any (exec
# sleep): 50 zombies held by a live parent until the job is killed. (Children that exited before the exec could be
# reaped by the shell itself, making fewer zombies.)
i=0
while [ "$i" -lt 50 ]; do
    sleep 1 &
    i=$((i + 1))
done
exec sleep 600
