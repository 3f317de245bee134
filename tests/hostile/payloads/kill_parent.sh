#!/bin/sh
# SIGKILL to the process that started it (the JobWrapper), then carries on, hoping to run unwatched. It waits 2 s
# first, so the pilot has seen it RUNNING: killed before that, the job would end ERROR_E from STARTED instead, just
# as safely, but the test could not say which to expect.
sleep 2
kill -9 "$PPID"
sleep 600
