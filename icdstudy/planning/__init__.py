"""GPU planning and measuring (memory, fit, hours; scaled-down measurements): used by `icdstudy.study`, the GPU
check kit and the benchmarks; no pipeline stage imports it."""
