#!/bin/sh
# Submitted once the hostile job has ended: DONE shows the JobRunner still matches and runs jobs.
echo "the runner still runs jobs"
