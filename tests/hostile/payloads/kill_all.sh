#!/bin/sh
# kill -9 -1: SIGKILL to every process the payload may signal. As root that is every process of its PID namespace
# except itself and the namespace's pid 1: without a PID namespace of its own, the pilot and every other job.
sleep 600 &
kill -9 -1
# Still here (kill -1 spares the sender): leave with a code the test recognises.
exit 3
