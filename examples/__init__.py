"""Runnable examples; each runs in the test suite.

``tests/integration/test_examples.py`` runs them, except the Spark example, which runs in
``tests/integration/test_spark.py`` on that module's SparkSession.
"""
