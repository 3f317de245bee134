"""Tables of public facts the pilot reads (each module cites its sources)."""
