#!/bin/sh
# Leaves a stopped (SIGSTOP) child behind and exits 0: a stopped process does not act on SIGTERM until it is
# continued, so only SIGKILL (or SIGCONT first) ends it.
sleep 600 &
kill -STOP $!
sleep 2
exit 0
