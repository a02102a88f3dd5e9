"""Speed and memory benchmark of the segmentation pipeline against peer networks.

An application-level package (it may import inference, models, data and io); nothing in the
library imports it.
"""

from spineseg.benchmark.memory import MemoryConfig, MemoryReport, measure_segment_memory
from spineseg.benchmark.peers import NnUNetFastSpec
from spineseg.benchmark.runner import BenchmarkConfig, BenchmarkReport, run_benchmark

__all__ = ["BenchmarkConfig", "BenchmarkReport", "MemoryConfig", "MemoryReport",
           "NnUNetFastSpec", "measure_segment_memory", "run_benchmark"]
