"""Airflow-facing logic: what each task of ``superres_daily`` does.

The DAG file only wires these together.  Nothing here imports torch, pyspark,
pandas or Great Expectations at module level, so DAG parsing stays fast.
"""
