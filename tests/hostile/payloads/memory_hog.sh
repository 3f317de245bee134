#!/bin/sh
# Grows by 10 MB of really touched memory every 50 ms up to $1 MB (bounded: a few hundred MB past a small
# MemorySize), then holds it. perl, not python: it is in every Debian image, minbase included.
exec perl -e '
    my @blocks;
    for (1 .. $ARGV[0] / 10) { push @blocks, "x" x (10 << 20); select(undef, undef, undef, 0.05) }
    sleep 600' "${1:-400}"
