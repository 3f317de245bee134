#!/bin/sh
# kill -9 0: SIGKILL to every process of the payload's own process group, itself and a child included.
sleep 600 &
kill -9 0
# Not reached: the shell belongs to the group it just killed.
exit 0
