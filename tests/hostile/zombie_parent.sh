#!/bin/sh
# Starts 50 children that exit at once, then becomes a program that never waits for them (exec sleep): 50 zombies
# held by a live parent until the job is killed.
i=0
while [ "$i" -lt 50 ]; do
    /bin/true &
    i=$((i + 1))
done
exec sleep 600
