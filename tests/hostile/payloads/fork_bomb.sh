#!/bin/sh
# A fork bomb, bounded: every process forks two more down to depth $1, so 2^($1+1) - 1 processes (4095 for 11)
# that all stay. Unbounded it would take the node down, unless pids.max is in force.
bomb() {
    if [ "$1" -gt 0 ]; then
        bomb $(($1 - 1)) &
        bomb $(($1 - 1)) &
        wait
    else
        exec sleep 600
    fi
}
bomb "${1:-11}"
