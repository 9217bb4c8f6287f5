"""Speed and memory benchmarks (`rnnlab bench`)."""
