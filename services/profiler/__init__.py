"""The profiler service: pprof profiles in, queryable stacks and pprof-style reports out."""
