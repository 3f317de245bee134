#!/bin/sh
# Starts a daemon the classic way and exits 0 at once: fork, setsid (a session and process group of its own), the
# first child exits (so the daemon is an orphan), cd /, every descriptor on /dev/null, an empty environment (no
# ALIEN_PROC_ID or anything else to be found by), SIGTERM and SIGHUP ignored. It means to outlive the job.
( setsid /bin/sh -c 'cd / && exec env -i /bin/sh -c "trap \"\" TERM HUP; exec sleep 600"' </dev/null >/dev/null 2>&1 & )
exit 0
