#!/bin/sh
# Starts a daemon the classic way and exits 0: fork, setsid (a session and process group of its own), the first
# child exits (so the daemon is an orphan), cd /, every descriptor on /dev/null, an empty environment (no
# ALIEN_PROC_ID or anything else to be found by), SIGTERM and SIGHUP ignored. It means to outlive the job.
# The payload exits only once the daemon has set its traps (it says so with a file in the work directory): the
# JobWrapper ends what is left the moment the payload exits, and a daemon still starting up would then end on the
# SIGTERM it had not yet learnt to ignore. A second more, so the test's sampler (every 0.3 s) sees both sessions.
w=$(pwd)
( setsid /bin/sh -c "cd / && exec env -i /bin/sh -c 'trap \"\" TERM HUP; : > \"$w/daemon-ready\"; exec sleep 600'" \
    </dev/null >/dev/null 2>&1 & )
n=0
while [ ! -e daemon-ready ] && [ "$n" -lt 300 ]; do
    n=$((n + 1))
    sleep 0.1
done
sleep 1
exit 0
