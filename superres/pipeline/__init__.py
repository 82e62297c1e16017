"""The pipeline's stages as plain functions; ``spark_jobs/`` and the DAG only wire them."""
