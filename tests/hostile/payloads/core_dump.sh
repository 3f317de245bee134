#!/bin/sh
# A real segfault with core dumps allowed: perl reads a C string through the pointer 8 (unpack "p") and the kernel
# writes the core where core_pattern says (the work directory, for a plain "core"). The payload itself goes on.
ulimit -c unlimited
perl -e 'print unpack("p", pack("J", 8))'
echo "perl ended with status $?"
sleep 600
