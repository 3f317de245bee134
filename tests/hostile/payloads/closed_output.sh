#!/bin/sh
# Closes its stdout and stderr while it still has work to do, and so does its child: whoever reads the payload's
# output sees end-of-file long before the payload ends. The child writes after-close.txt (a required output file)
# two seconds later, so the job is DONE only if the pilot waited for the processes, not for the end of the output.
echo "before closing"
( exec >&- 2>&-; sleep 2; echo "written after stdout and stderr were closed" > after-close.txt ) &
exec >&- 2>&-
wait
