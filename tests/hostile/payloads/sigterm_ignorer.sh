#!/bin/sh
# Ignores SIGTERM, and so does its child (an ignored signal stays ignored across fork and exec): only SIGKILL, after
# ForcedKillTimeout, ends it.
trap '' TERM
sleep 600 &
wait
