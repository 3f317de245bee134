#!/bin/sh
# Writes 4 MB at a time into the work directory, up to $1 MB (bounded), then holds: the disk rule must stop it long
# before that (its JDL asks for a small WorkDirectorySize).
mb=0
while [ "$mb" -lt "${1:-256}" ]; do
    head -c 4194304 /dev/zero >> filler.dat
    mb=$((mb + 4))
    sleep 0.05
done
sleep 600
