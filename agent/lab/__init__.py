"""Process helpers for running real BGP speakers (gobgpd, FRR) in tests, benchmarks and the lab."""
