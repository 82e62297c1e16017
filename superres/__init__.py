"""superres: FSRCNN super-resolution shared by the CLI, Spark jobs, DAG, notifier and benchmarks."""

__version__ = "0.1.0"
