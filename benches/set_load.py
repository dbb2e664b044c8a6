#!/usr/bin/env python3
"""set_load.py N SIZE [PREFIX]: N Redis SET commands in RESP on standard output, for
`redis-cli --pipe`: keys PREFIX:0 to PREFIX:N-1 (PREFIX defaults to "bulk"), each value SIZE
bytes of "x". Used by the bulk-load benchmarks (kv_bulk.sh, follow_bulk.sh,
distant_backup.sh)."""
import sys

n, size = int(sys.argv[1]), int(sys.argv[2])
prefix = sys.argv[3].encode() if len(sys.argv) > 3 else b"bulk"
value = b"x" * size
out = sys.stdout.buffer
for i in range(n):
    key = b"%s:%d" % (prefix, i)
    out.write(b"*3\r\n$3\r\nSET\r\n$%d\r\n%s\r\n$%d\r\n%s\r\n" % (len(key), key, len(value), value))
