#!/bin/sh
# Forks 50 children that exit at once and never waits for any of them: 50 zombies held by a live parent until the
# job is killed. (perl, because a shell reaps its finished background jobs by itself now and then.)
exec perl -e 'for (1 .. 50) { exit 0 if fork() == 0 } sleep 600'
