"""What every stage needs, and nothing else: params.yaml and its schema (params, schema), atomic files (io), and
the machine (machine: the CPU kernels pinned to AVX2, peak memory). Imports nothing else of the library."""
