"""Benchmarks: shard writer, loader and GPU step throughput, bf16 vs fp32 precision."""
