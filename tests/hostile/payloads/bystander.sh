#!/bin/sh
# The job running beside the hostile one: waits until the test drops "release" into its work directory, then exits
# 0. It ends DONE only if nothing the hostile payload did reached it, its JobWrapper or its JobAgent.
n=0
while [ ! -e release ]; do
    n=$((n + 1))
    if [ "$n" -gt 3000 ]; then
        echo "never released" >&2
        exit 1
    fi
    sleep 0.1
done
echo released
