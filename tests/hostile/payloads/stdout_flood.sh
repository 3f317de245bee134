#!/bin/sh
# Writes $1 MB to stdout as fast as it can (bounded), then exits 0.
yes "flooding stdout with this line, again and again" | head -c $(( ${1:-256} * 1048576 ))
